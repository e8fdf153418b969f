"""How this machine runs the training step fastest: bf16 where it is native, compiled where a compiler is.

The choices, each measured on the project's CPUs (docs/performance.md, "The fast training path"):

* **bf16 autocast** where the hardware computes bf16 itself: CUDA GPUs, and CPUs with AVX512_BF16 or
  AMX. Elsewhere (AVX2-only CPUs) oneDNN converts to fp32 and back, which is slower than fp32, so those
  train in fp32. Only the training step autocasts on a CPU: the embeddings for clustering and evaluation
  stay fp32 there, so evaluations compare across machines.
* **torch.compile** of the training forward and backward (inductor): it fuses the element-wise work
  that dominates a GAM ResNet's step (batch norm, ReLU, GAM's pooling and gating, layout copies). The
  first step compiles for a few minutes; inductor's own cache (``TORCHINDUCTOR_CACHE_DIR``, by default
  under the system's temporary folder) makes a resumed run's compile on the same machine shorter. On a
  CPU it needs a C++ compiler; without one the step runs eagerly and the run log says so.
* channels_last memory format, the layout oneDNN's convolutions run natively (``TrainConfig.channels_last``).
* **fused SGD** (:func:`nesterov_sgd`): one kernel updates each parameter, where torch's default SGD on a
  CPU runs several ops per parameter in a Python loop (its multi-tensor form is for GPUs only).

:func:`describe_training_path` is what the run log records, so a run's speed can be read with the machine
and the path that produced it.
"""
import os
import platform
import shutil
from pathlib import Path

import torch

__all__ = ['compile_for_training', 'cpu_description', 'cpu_model_name', 'describe_training_path',
           'native_bf16', 'nesterov_sgd', 'training_autocast_dtype']


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware (a CUDA GPU; a CPU with AVX512_BF16 or AMX)."""
    if device.type == 'cuda':
        return True
    if device.type != 'cpu':
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def training_autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The training step's autocast dtype: bf16 when ``amp`` is on and the device computes it natively."""
    return torch.bfloat16 if amp and native_bf16(device) else None


def compile_for_training(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, str]:
    """``torch.compile(model)`` where this machine can compile it, else ``model``; and why, for the log."""
    if device.type == 'cpu':
        compiler = os.environ.get('CXX', 'g++')
        if shutil.which(compiler) is None:
            return model, f'eager: no C++ compiler ({compiler}) for torch.compile on the CPU'
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    # static shapes: a resolution schedule's second input size compiles its own kernels once, instead of
    # turning every kernel of the run into a slower shape-generic one
    return torch.compile(model, dynamic=False), f'compiled (inductor cache {cache_dir()})'


def nesterov_sgd(params, device: torch.device, lr: float, momentum: float,
                 weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay (paper 5.2), fused where ``device`` has the kernel.

    The fused update does the default SGD's arithmetic in one pass per parameter. ``load_state_dict``
    restores the saved parameter group's ``fused`` setting; the trainer sets it back after a resume, so a
    run takes the form of the code that runs it.
    """
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True,
                           fused=device.type in ('cpu', 'cuda'))


def cpu_model_name() -> str:
    """The processor's marketing name (``lscpu``'s "Model name"), or what the platform module knows."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """The processor and its number of logical cores: what a figure measured on this machine names."""
    return f'{cpu_model_name()}, {os.cpu_count()} cores'


def describe_training_path(device: torch.device, autocast: torch.dtype | None, compiled: str,
                           channels_last: bool, optimizer: torch.optim.Optimizer) -> dict:
    """The facts a speed figure needs beside it: the device, its instruction set, the path the step takes."""
    fused = all(group.get('fused') for group in optimizer.param_groups)
    facts = {'device': str(device), 'autocast': str(autocast).replace('torch.', '') if autocast else 'none',
             'compile': compiled, 'channels_last': channels_last,
             'optimizer': f'{type(optimizer).__name__}{" fused" if fused else ""}',
             'torch': torch.__version__}
    if device.type == 'cuda':
        facts['gpu'] = torch.cuda.get_device_name(device)
    else:
        facts.update(cpu=cpu_model_name(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                     native_bf16=native_bf16(device), threads=torch.get_num_threads())
    return facts
