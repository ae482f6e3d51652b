-- Email change (src/accounts/email_change.rs): the link that confirms a new address (sent to
-- it; the token's `email` is the new address) and the link that restores the old one (sent to
-- the old address; the token's `email` is the old address).
ALTER TABLE auth_tokens DROP CONSTRAINT auth_tokens_purpose_check;
ALTER TABLE auth_tokens ADD CONSTRAINT auth_tokens_purpose_check
    CHECK (purpose IN ('verify_email', 'reset_password', 'change_email', 'revert_email'));
