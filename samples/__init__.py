"""The bundled sample sources, installed as package data: real ADE20K 2021 release files
(``ade20k/``, see its PROVENANCE.md) and DTD-format textures (``dtd/``, drawn by
``make_dtd.py``), with ``broden-sample.yaml``, the config ``broden build`` builds when given
none."""
