static const char *kHeader = "-----BEGIN RSA PRIVATE KEY-----";
size_t private_key_len = X25519_PRIVATE_KEY_LEN;
const size_t P256_SECRET_SIZE = EC_P256R1_FIELD_ELEM_BYTES;
token_length = kP384PointLen;
