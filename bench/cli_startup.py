"""How long the `pyae` command takes to answer `--help`, against importing TensorFlow.

Runs the console script as pip writes it (entry point pyae.cli:main) and `python -m pyae`,
interleaved with a bare `import tensorflow`, and prints medians. Use the pyae on sys.path
(a checkout: PYTHONPATH=. python bench/cli_startup.py).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSOLE_SCRIPT = "import sys\nfrom pyae.cli import main\nsys.exit(main())\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs of each command (default 11)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "pyae"
        script.write_text(CONSOLE_SCRIPT)
        commands = {"pyae --help": [sys.executable, str(script), "--help"],
                    "python -m pyae --help": [sys.executable, "-m", "pyae", "--help"],
                    "python -c 'import tensorflow'": [sys.executable, "-c",
                                                      "import tensorflow"]}
        seconds = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - started)
    print("| command | median s | min s | max s |\n|---|---|---|---|")
    for name, times in seconds.items():
        print(f"| `{name}` | {statistics.median(times):.3f} | {min(times):.3f} | "
              f"{max(times):.3f} |")


if __name__ == "__main__":
    main()
