"""ASN.1 declarations as asn1crypto classes, one module per standard, apart from the code that
builds, reads and verifies with them: the RFC is visible here, the behaviour is in request/."""
