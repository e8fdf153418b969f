"""What the Hub reads from a model card: its metadata (``ModelCardData`` / ``EvalResult``) and the sections
every released card shares (what the evaluation split is, the hand-crafted baseline, install, citation).

The metadata is written by huggingface_hub itself, so ``ModelCard.load`` finds ``pipeline_tag``, the licence
and a ``model-index`` whose rank-1 and mAP are the card's table. The card's prose stays hand-written:
huggingface_hub's template has no place for a re-ID evaluation protocol, a recipe command or a data licence.
"""
from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ['card_data', 'split_note', 'baseline_paragraph', 'INSTALL', 'CITATION', 'with_metadata',
           'DEV_SPLIT_FOLDER']

DEV_SPLIT_FOLDER = 'market1501-dev'  # the project's 100-identity evaluation subset of Market-1501
RESEARCH_ONLY_LICENCE = 'market-1501-research-only'
# the card's own section states the terms: no page of the data set's owners is kept stable enough to link
LICENCE_LINK = 'README.md#data-and-licence'
TAGS = ['image-feature-extraction', 'person-re-identification', 'timm', 'timm-gam']
METRICS = {'rank1': 'rank-1', 'mAP': 'mAP'}  # the table's columns the model-index repeats

INSTALL = """Install the code (it registers the GAM models with timm and brings timm, torch and
huggingface_hub), from a checkout of the timm-gam repository, which also holds the training recipe:

```bash
pip install -e .          # in the timm-gam repository; pip install -e ".[onnx]" for the fast CPU extractor
```
"""

CITATION = """```bibtex
@inproceedings{nikhal2021unsupervised,
  title     = {Unsupervised Attention Based Instance Discriminative Learning for Person Re-Identification},
  author    = {Nikhal, Kshitij and Riggan, Benjamin S.},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2021}
}
```
"""


def _is_dev_split(data_folder: str | None) -> bool:
    return data_folder == DEV_SPLIT_FOLDER


def dataset_label(data_folder: str | None) -> tuple[str, str]:
    """(data set name, split) as the model-index names them."""
    if data_folder is None:
        return 'synthetic persons (timm_gam.reid.make_synthetic_reid)', 'query/gallery'
    if _is_dev_split(data_folder):
        return ('Market-1501, 100-identity subset of its training identities (market1501-dev)',
                'query (434) / gallery (1,251)')
    return f'data folder {data_folder}', 'query/gallery'


def card_data(model_name: str, metrics: dict | None, data_folder: str | None,
              research_only: bool) -> ModelCardData:
    """The card's metadata: task, licence, data set, and rank-1 / mAP as a model-index."""
    name, split = dataset_label(data_folder)
    results = [] if metrics is None else [
        EvalResult(task_type='image-feature-extraction', task_name='Person re-identification',
                   dataset_type='market1501' if data_folder else 'synthetic', dataset_name=name,
                   dataset_split=split, metric_type=key, metric_name=label,
                   metric_value=round(float(metrics[key]), 1))
        for key, label in METRICS.items()]
    licence = dict(license='other', license_name=RESEARCH_ONLY_LICENCE, license_link=LICENCE_LINK) \
        if research_only else dict(license='apache-2.0')
    return ModelCardData(
        library_name='timm', pipeline_tag='image-feature-extraction', tags=list(TAGS),
        datasets=['market1501'] if data_folder else None, metrics=['rank-1', 'mAP'],
        model_name=model_name, eval_results=results or None, **licence)


def split_note(data_folder: str | None) -> str:
    """What the evaluation split is, so nobody compares its figures with published full-benchmark ones."""
    if not _is_dev_split(data_folder):
        return ''
    return ('\nThe split is this project\'s **100-identity subset of Market-1501\'s training identities** '
            '(`market1501-dev`: 434 query and 1,251 gallery images, identities absent from the 400 trained '
            'on). Its gallery is a small fraction of Market-1501\'s 19,732 images, so the figures are not '
            'comparable with published full-Market-1501 results: compare models on this split only, side by '
            'side.\n')


def baseline_paragraph(baseline: dict | None) -> str:
    """The hand-crafted colour histogram on the same split, the floor a learned embedding has to clear."""
    if baseline is None:
        return ''
    row = ' | '.join(f'{baseline[k]:.1f}' for k in ('rank1', 'rank5', 'rank10', 'mAP'))
    return ('\nFor scale, an HSV colour histogram of 6 horizontal stripes (no learning, '
            '`recipes/colour_histogram_baseline.py`) on the same split:\n\n'
            f'| rank-1 | rank-5 | rank-10 | mAP |\n|---|---|---|---|\n| {row} |\n')


def with_metadata(data: ModelCardData, body: str) -> str:
    """The ``README.md`` text: huggingface_hub's YAML header, then the card's text."""
    return str(ModelCard(f'---\n{data.to_yaml()}\n---\n{body.lstrip()}'))
