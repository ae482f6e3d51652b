-- The cap on email to one recipient (src/mail/cap.rs; SPEC: "Email to one recipient is
-- capped"). A capped email (verification, password reset…) records its kind and its
-- recipient's mailbox (lower case, `+tag` dropped), and the cap counts a mailbox's emails of
-- the last hour through this index. Both are NULL for emails that are not capped (billing
-- notices), which old code keeps writing during a rolling deploy.
ALTER TABLE emails
    ADD COLUMN cap_kind text,
    ADD COLUMN cap_recipient text,
    ADD CONSTRAINT emails_cap_complete CHECK ((cap_kind IS NULL) = (cap_recipient IS NULL));

CREATE INDEX emails_cap ON emails (cap_recipient, created_at) WHERE cap_recipient IS NOT NULL;
