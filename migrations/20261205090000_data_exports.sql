-- Data export (src/accounts/export.rs; SPEC `POST /settings/export`): a job writes the JSON
-- document of everything keel holds about the user here and emails a link to it; the link
-- works for its user only, for 24 hours from when it is ready; an hourly job deletes old ones.
CREATE TABLE data_exports (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    document   jsonb,
    expires_at timestamptz
);
CREATE INDEX data_exports_user ON data_exports (user_id);
