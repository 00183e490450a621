"""Program entry of `xbarlab` and `python -m xbarlab`.

A Ctrl-C while Python is still importing the command line has nothing to stop: it ends with the
same one line and exit code 130 as any other Ctrl-C, never a traceback. Once the command is over
(its exit code decided and reported), a late Ctrl-C is ignored.
"""

import signal
import sys


def run() -> None:
    interrupted = []

    def record(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record)
    try:
        import protocols.rig  # noqa: F401 (what `main` needs before its handler is in place)
        from xbarlab.cli import main

        # `main` installs its own handler for the command and puts this one back when it is over
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except BaseException:
        # a Ctrl-C inside an extension module's import surfaces as that import's ImportError
        if not interrupted:
            raise
        sys.stderr.write("interrupted: no instrument was used\n")
        eval("None")  # clears CPython's memory of the interrupt (see xbarlab.cli.main)
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
