import sys
from pathlib import Path

# The benchmark scripts import each other as top-level modules (``from _streaming import ...``).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
