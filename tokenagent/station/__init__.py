"""The enrollment station: PC/SC readers, the cards in them and the PKCS#11 tokens they become.

Sits above enroll/ (docs/development.md): `readers` lists and watches readers through pyscard,
`atr` names known cards, `config` reads the station config (reader -> token selector).
"""
