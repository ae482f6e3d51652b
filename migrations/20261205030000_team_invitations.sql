-- Team invitations and the team audit log (src/accounts/invitations.rs, src/accounts/audit.rs;
-- SPEC "Teams (B2B)").

-- An invitation to join a team with a role, emailed as a link. It keeps its id while its link
-- changes: resending, or inviting the address again, gives it a new token and moves the old
-- one to `invitation_old_links`, so an old link is told "replaced" rather than "unknown".
CREATE TABLE invitations (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    team_id     uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    -- As typed by the inviter; accepted by the user with this address in any case.
    email       text        NOT NULL CHECK (length(email) <= 254),
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    -- SHA-256 of the link's token: the database never holds a usable link.
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    invited_by  uuid        REFERENCES users ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- When the latest link was sent, and when it stops working.
    sent_at     timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    -- How it ended, if it has: accepted (by whom) or revoked.
    accepted_at timestamptz,
    accepted_by uuid        REFERENCES users ON DELETE SET NULL,
    revoked_at  timestamptz,
    CHECK (accepted_at IS NULL OR revoked_at IS NULL)
);
-- One pending invitation per team and address: inviting again replaces it.
CREATE UNIQUE INDEX invitations_pending ON invitations (team_id, lower(email))
    WHERE accepted_at IS NULL AND revoked_at IS NULL;

CREATE TABLE invitation_old_links (
    token_hash    bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    invitation_id uuid  NOT NULL REFERENCES invitations ON DELETE CASCADE
);
CREATE INDEX invitation_old_links_invitation ON invitation_old_links (invitation_id);

-- Who did what in a team, when, and from which client address. Append-only: the trigger
-- refuses updates (rows go only with their team).
CREATE TABLE team_audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id     uuid        NOT NULL REFERENCES teams ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    -- Who did it: a user (their address as it was then), or NULL for Stripe and keel itself.
    actor_id    uuid        REFERENCES users ON DELETE SET NULL,
    actor_email text,
    client_ip   inet,
    -- 'invitation.sent', 'member.removed', 'subscription.status_changed'… (src/accounts/audit.rs)
    action      text        NOT NULL,
    -- What it was done to (an address, a subscription id) and the details ('member → admin').
    subject     text,
    detail      text
);
CREATE INDEX team_audit_log_team ON team_audit_log (team_id, id DESC);

CREATE FUNCTION team_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'team_audit_log is append-only';
END;
$$;
CREATE TRIGGER team_audit_log_append_only BEFORE UPDATE ON team_audit_log
    FOR EACH ROW EXECUTE FUNCTION team_audit_log_append_only();
