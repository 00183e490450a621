import subprocess
import sys

from xbarlab import __version__


def test_help_and_version():
    out = subprocess.run([sys.executable, "-m", "xbarlab", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout
    out = subprocess.run([sys.executable, "-m", "xbarlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_unknown_command_exits_2():
    out = subprocess.run([sys.executable, "-m", "xbarlab", "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2
