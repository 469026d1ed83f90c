"""The token layer: the only package that imports ``pkcs11``.

Module discovery (`modules`), ``pkcs11:`` URIs (`uri`), PIN sources (`pins`), loading modules and
selecting tokens (`library`), sessions and the single login (`session`), objects and look-ups
(`objects`), and the `tokens` inventory (`inventory`). `modules`, `uri` and `pins` do not import
``pkcs11`` themselves, so the CLI can parse options without loading it.
"""
