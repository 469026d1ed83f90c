"""Every object identifier tokenagent reads or writes, by one name each, for inf/ and request/ alike.

Grouped by the document that assigns it. Display names of these OIDs live beside the code that
shows them (request/dump.py, request/extensions.py); the numbers live only here.
"""

from __future__ import annotations

# -- RFC 5652 (CMS) and PKCS #9 ------------------------------------------------------------------------
OID_DATA = "1.2.840.113549.1.7.1"  # id-data
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"  # id-signedData
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"  # RFC 5652 11.1
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"  # RFC 5652 11.2
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"  # RFC 5652 11.3
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"  # PKCS #9
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"  # PKCS #9 extensionRequest
OID_SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"  # RFC 4262

# -- algorithms (RFC 4055) -------------------------------------------------------------------------------
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"

# -- X.500 attribute types and RFC 5280 extensions -----------------------------------------------------------
OID_COUNTRY = "2.5.4.6"
OID_SUBJECT_KEY_IDENTIFIER = "2.5.29.14"
OID_KEY_USAGE = "2.5.29.15"
OID_SUBJECT_ALT_NAME = "2.5.29.17"
OID_ISSUER_ALT_NAME = "2.5.29.18"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_AUTHORITY_KEY_IDENTIFIER = "2.5.29.35"
OID_EXTENDED_KEY_USAGE = "2.5.29.37"

# -- Microsoft (MS-WCCE, wincrypt.h) -----------------------------------------------------------------------
OID_RENEWAL_CERTIFICATE = "1.3.6.1.4.1.311.13.1"  # szOID_RENEWAL_CERTIFICATE, MS-WCCE 2.2.2.7.3
OID_ENROLLMENT_NAME_VALUE_PAIR = "1.3.6.1.4.1.311.13.2.1"  # szOID_ENROLLMENT_NAME_VALUE_PAIR
OID_ENROLLMENT_CSP_PROVIDER = "1.3.6.1.4.1.311.13.2.2"  # szOID_ENROLLMENT_CSP_PROVIDER
OID_OS_VERSION = "1.3.6.1.4.1.311.13.2.3"  # szOID_OS_VERSION
OID_TEMPLATE_NAME = "1.3.6.1.4.1.311.20.2"  # szOID_ENROLL_CERTTYPE_EXTENSION
OID_CERTIFICATE_REQUEST_AGENT = "1.3.6.1.4.1.311.20.2.1"  # szOID_ENROLLMENT_AGENT (EKU)
OID_UPN = "1.3.6.1.4.1.311.20.2.3"  # szOID_NT_PRINCIPAL_NAME (otherName)
OID_TEMPLATE_INFO = "1.3.6.1.4.1.311.21.7"  # szOID_CERTIFICATE_TEMPLATE
OID_CLIENT_INFO = "1.3.6.1.4.1.311.21.20"  # szOID_REQUEST_CLIENT_INFO
OID_DS_GUID = "1.3.6.1.4.1.311.25.1"  # the directory object GUID (otherName)

# -- RFC 5272 / RFC 6402 (CMC) ---------------------------------------------------------------------------
OID_ID_CMC = "1.3.6.1.5.5.7.7"  # id-cmc, RFC 5272 section 6
OID_STATUS_INFO = "1.3.6.1.5.5.7.7.1"
OID_IDENTIFICATION = "1.3.6.1.5.5.7.7.2"
OID_IDENTITY_PROOF = "1.3.6.1.5.5.7.7.3"
OID_TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"
OID_SENDER_NONCE = "1.3.6.1.5.5.7.7.6"
OID_RECIPIENT_NONCE = "1.3.6.1.5.5.7.7.7"
OID_ADD_EXTENSIONS = "1.3.6.1.5.5.7.7.8"
OID_GET_CERT = "1.3.6.1.5.5.7.7.15"
OID_REVOKE_REQUEST = "1.3.6.1.5.5.7.7.17"
OID_REG_INFO = "1.3.6.1.5.5.7.7.18"
OID_RESPONSE_INFO = "1.3.6.1.5.5.7.7.19"
OID_QUERY_PENDING = "1.3.6.1.5.5.7.7.21"
OID_POP_LINK_RANDOM = "1.3.6.1.5.5.7.7.22"
OID_POP_LINK_WITNESS = "1.3.6.1.5.5.7.7.23"
OID_STATUS_INFO_V2 = "1.3.6.1.5.5.7.7.25"
OID_BATCH_REQUESTS = "1.3.6.1.5.5.7.7.28"
OID_POP_LINK_WITNESS_V2 = "1.3.6.1.5.5.7.7.33"
OID_IDENTITY_PROOF_V2 = "1.3.6.1.5.5.7.7.34"
OID_PKI_DATA = "1.3.6.1.5.5.7.12.2"  # id-cct-PKIData, RFC 5272 section 3.2
OID_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"  # id-cct-PKIResponse, RFC 5272 section 3.3

#: The name-value pair an enrollment agent uses to name the user (MS-WCCE, AD CS).
REQUESTER_NAME = "RequesterName"
