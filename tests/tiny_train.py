"""`python tests/tiny_train.py FLAGS...` = `python train.py FLAGS...` with the tests' 'w8_tiny' HRNet
registered, for tests that run training as separate processes (signals, several processes)."""
import pathlib
import runpy
import sys

from tiny_net import register_tiny_hrnet

if __name__ == "__main__":
    register_tiny_hrnet()
    train_py = pathlib.Path(__file__).resolve().parents[1] / "train.py"
    sys.argv[0] = str(train_py)
    runpy.run_path(str(train_py), run_name="__main__")
