"""Where a zoo's models come from: one module per source kind, and the fetch stage.

- ``registry``: the kinds a sheet may name (``KIND_MODULES``), each declared by its module;
- ``base``: what a kind declares (``SourceKind``), what it returns (``Fetched``), ``FetchError``;
- one module per kind: ``file``, ``train``, ``random`` (with ``built``, what the two share),
  ``torchvision``, ``timm``, ``hf`` (with ``hubs``, what the hub kinds share);
- ``fetch``: ``fetch_model``, which writes any kind's model in the common form.

docs/sources.md says how to add a kind. Nothing is imported here, so importing the registry
(the Snakefile does) costs no more than the kinds' declarations.
"""
