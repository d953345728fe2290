"""What accelerator this worker has: a hardware class and the details behind it.

The hardware class is part of a track: with a fixed wall-clock budget the
machine is a parameter of the result, so only trials of one class are compared.
It is a short slug (apple-m3-max-64gb-metal, cpu-amd-epyc-2c-23gb) built from
what the OS reports, plus the MLX backend the trial's Python will use.
"""

import json
import os
import platform
import re
import subprocess
import sys

# Asks the trial's interpreter (not this process) which MLX backend it gets:
# on a Mac importing MLX here would also claim the GPU in the long-lived worker.
MLX_PROBE = (
    "import json\n"
    "try:\n"
    "    import mlx.core as mx\n"
    "except Exception as e:\n"
    "    print(json.dumps({'backend': 'none', 'version': None, 'error': repr(e)})); raise SystemExit\n"
    "backend = 'metal' if mx.metal.is_available() else "
    "('cuda' if hasattr(mx, 'cuda') and mx.cuda.is_available() else 'cpu')\n"
    "print(json.dumps({'backend': backend, 'version': mx.__version__}))\n"
)
# Seconds the probe may take (first import after install compiles bytecode).
PROBE_TIMEOUT = 120

# Words in CPU brand strings that say nothing about the chip.
NOISE_WORDS = r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\b\d+-core\b|\b(with|w/) radeon.*$"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _linux_cpu() -> tuple[str, int]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    model = value.strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return model or platform.processor() or platform.machine(), cores


def _linux_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _nvidia_gpu() -> tuple[str, int]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    if not out:
        return "", 0
    name, _, mem = out.splitlines()[0].partition(",")
    try:
        return name.strip(), int(float(mem)) * 2**20
    except ValueError:
        return name.strip(), 0


def probe_mlx(python: str = sys.executable, env: dict | None = None) -> dict:
    """{'backend': 'metal'|'cuda'|'cpu'|'none', 'version': str|None} as the trial's Python sees it."""
    try:
        p = subprocess.run([python, "-c", MLX_PROBE], capture_output=True, text=True,
                           timeout=PROBE_TIMEOUT, env=env)
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"backend": "none", "version": None, "error": repr(e)}


def detect(python: str = sys.executable, env: dict | None = None) -> tuple[str, dict]:
    """(hardware_class, details). Details: os, machine, chip, cores, memory_gb, mlx_backend, mlx_version."""
    system = platform.system()
    mlx = probe_mlx(python, env)
    backend = mlx.get("backend", "none")
    if system == "Darwin":
        chip = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.processor() or "mac"
        try:
            memory = int(_run(["sysctl", "-n", "hw.memsize"]) or 0)
        except ValueError:
            memory = 0
        cores = os.cpu_count() or 1
    else:
        chip, cores = _linux_cpu()
        memory = _linux_memory_bytes()
    memory_gb = round(memory / 2**30) if memory else 0
    details = {"os": f"{system} {platform.release()}", "machine": platform.machine(), "chip": chip,
               "cores": cores, "memory_gb": memory_gb, "mlx_backend": backend,
               "mlx_version": mlx.get("version")}

    chip_slug = slug(re.sub(NOISE_WORDS, " ", chip, flags=re.IGNORECASE)) or slug(platform.machine())
    if backend == "cuda":
        # the GPU, not the host CPU, sets the pace
        gpu, gpu_mem = _nvidia_gpu()
        details["gpu"] = gpu
        hardware_class = f"cuda-{slug(gpu.replace('NVIDIA', '')) or 'gpu'}-{round(gpu_mem / 2**30)}gb"
    elif backend == "metal" or chip_slug.startswith("apple"):
        # unified memory: the memory size matters as much as the chip
        hardware_class = f"{chip_slug}-{memory_gb}gb-{backend}"
    else:
        # the CPU build: the cores this process may use set the pace
        hardware_class = f"cpu-{chip_slug}-{cores}c-{memory_gb}gb"
        gpu, gpu_mem = _nvidia_gpu()
        if gpu:     # a fork's own framework (PyTorch on CUDA) may train on it: part of the machine's class
            details["gpu"] = gpu
            hardware_class += f"-cuda-{slug(gpu.replace('NVIDIA', '')) or 'gpu'}-{round(gpu_mem / 2**30)}gb"
    return hardware_class, details
