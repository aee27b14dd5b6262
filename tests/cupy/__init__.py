"""Tests of the CuPy UNet backend: the operation-override mechanism, the NumPy reference of every
kernel, the generated CUDA sources (run on the CPU through a C++ shim, and compiled with nvcc when
installed), the CuPy trainer with NumPy standing in for CuPy, the benchmark's CPU smoke run, and —
marked ``gpu`` and skipped without CuPy and a CUDA device — the same checks on a GPU."""
