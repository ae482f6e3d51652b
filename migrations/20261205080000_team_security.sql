-- A team's security settings (SPEC: `POST /team/security`): when on, members without
-- two-factor sign-in are sent to enrol before they reach the team's pages.
ALTER TABLE teams ADD COLUMN require_2fa boolean NOT NULL DEFAULT false;
