"""Camera-centred features: the camera's mean embedding removed, a label-free correction of camera bias.

Every Market-1501 / DukeMTMC-reID file name says which camera took the image, the one piece of metadata
that unsupervised re-ID gets for free (CAP, Wang et al. AAAI 2021; ICE, Chen et al. ICCV 2021; IICS,
Xuan & Zhang CVPR 2021 all use it). A network trained without identities learns the camera too
(background, light, viewpoint): images of one camera sit closer together than images of one person seen
by two cameras. Subtracting each camera's mean embedding and normalising again removes the part shared by
everything one camera sees, so that nearest neighbours, and clusters built from them, cross cameras.
Zhuang et al. (ECCV 2020, camera-based batch normalisation) apply the same per-camera standardisation
inside the network. What it does to the released weights' dev-test figures is in docs/results.md.
"""
import torch
import torch.nn.functional as F

__all__ = ['camera_centred']


def camera_centred(embeddings: torch.Tensor, camera_ids) -> torch.Tensor:
    """``embeddings`` (n, d) minus the mean embedding of each one's camera, L2-normalised again.

    ``camera_ids`` (n,) are integers; every image needs one (-1, unknown, is refused).
    """
    camera_ids = torch.as_tensor(camera_ids, dtype=torch.long, device=embeddings.device)
    if camera_ids.shape != embeddings.shape[:1]:
        raise ValueError(f'one camera id per embedding needed: {len(camera_ids)} ids for '
                         f'{len(embeddings)} embeddings')
    if (camera_ids < 0).any():
        raise ValueError(f'{int((camera_ids < 0).sum())} images have no camera id (-1): camera-centred '
                         'features need the camera in every file name (Market-1501 or DukeMTMC-reID '
                         'layout)')
    cameras, inverse = torch.unique(camera_ids, return_inverse=True)
    sums = torch.zeros(len(cameras), embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, inverse, embeddings)
    counts = torch.bincount(inverse, minlength=len(cameras)).to(embeddings.dtype).unsqueeze(1)
    return F.normalize(embeddings - (sums / counts)[inverse], dim=1)
