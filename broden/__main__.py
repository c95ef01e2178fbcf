"""``python -m broden``: the ``broden`` command line, for launchers that start a module
rather than a script, such as ``torchrun``::

    python -m broden dissect STORE --out OUT --model dissect.zoo:resnet18 --layer layer4
    torchrun --nproc-per-node 2 -m broden dissect STORE --out OUT \\
        --model dissect.zoo:resnet18 --layer layer4 --distributed

``python -m broden ARGS`` is ``broden ARGS`` (same commands, messages and exit status).
"""

from broden.cli import main

if __name__ == "__main__":
    main()
