"""Reproducible environments that hold vLLM's *Python modules* without its compiled wheel.

Why: streamcheck audits vLLM code paths that are plain Python (``current_stream()``, the
``PyNcclCommunicator`` wrapper, the v1 KV connector base and factory, the v1 scheduler). The full
vLLM wheel pins its own torch and ships CUDA kernels, so it can neither be installed next to a CPU
torch nor travel to an offline GPU machine. Its ``.py`` files and ``METADATA`` can, together with
the dependencies that those imports need (wheels, installed with ``--no-deps`` so torch is never
touched). This tool builds exactly that, per vLLM version, from committed pins
(``tools/vllm_env/pinned/VERSION.txt``), so a test run or CI installs the same bytes every time.

The pins were found by trying: import the targets in an interpreter that sees only torch (and
what torch requires), install the distribution that the first ImportError names at the newest
version inside every declared range, repeat (``prepare VERSION --discover``).

Layout under ROOT (default ``.vllm/`` at the repository root, or ``$STREAMCHECK_VLLM_ROOT``)::

    wheels/                      downloaded wheels (the vLLM wheel is ~300-500 MB: fetched once)
    VERSION/site/vllm/**.py      the wheel's Python files
    VERSION/site/vllm-VERSION.dist-info/{METADATA,entry_points.txt}
    VERSION/site/streamcheck_vllm_stubs.py   (the contract: streamcheck.vllm_compat)
    VERSION/deps/                pinned dependencies (``pip install --no-deps --target``)
    VERSION/READY.json           written last; says which pins the env was built from

Run it as ``python -m tools.vllm_env SUBCOMMAND`` from the repository root; subcommands:
``prepare``, ``prepare-all`` (the CI versions), ``env``, ``probe``, ``pack-gpu``, ``find-stubs``.
Versions, specifiers, markers and requirements are read with ``packaging``. Linux x86_64 wheels.

Modules, one job each: ``layout`` (paths, shell variables), ``pins`` (supported versions and
their committed pins), ``requires`` (Requires-Dist, markers, specifiers), ``wheels`` (pip
download/install, unpacking the vLLM wheel), ``stubs`` (the stand-in module), ``probe`` and
``probe_child`` (importing the targets in a fresh interpreter), ``discover`` (finding the pins),
``prepare`` (building a version's tree), ``pack`` (the offline GPU machine's pack), ``__main__``.
This package is not shipped in streamcheck's wheel.
"""
