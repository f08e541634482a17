-- Destination ciphertexts are bound to their verification.
--
-- From this version a destination's AES-GCM associated data covers its verification's id
-- as well as the key id, so a ciphertext copied into another row does not open there.
-- Rows sealed before carry the key id alone as associated data; they are renamed
-- `unbound:<key id>` (key ids cannot hold a colon), which keeps them readable and makes
-- `verify-gateway reencrypt` list them as sealed with a key other than the current one
-- and re-seal them bound. The update rewrites every row: on a large table, migrate at a
-- quiet time (history is purged after `storage.retention_days`, so the table is bounded).
UPDATE verifications
    SET destination_key_id = 'unbound:' || destination_key_id
    WHERE destination_key_id NOT LIKE 'unbound:%';
