-- Account deletion (src/accounts/deletion.rs): the team audit log stays append-only, but an
-- update may erase personal data: blank the actor (also what `ON DELETE SET NULL` does when
-- the user goes), their address and client address, and replace the subject with
-- 'a deleted user'. Nothing else may change, and nothing may be rewritten to other values.
CREATE OR REPLACE FUNCTION team_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = OLD.id AND NEW.team_id = OLD.team_id AND NEW.at = OLD.at AND NEW.action = OLD.action
       AND NEW.detail IS NOT DISTINCT FROM OLD.detail
       AND (NEW.actor_id IS NOT DISTINCT FROM OLD.actor_id OR NEW.actor_id IS NULL)
       AND (NEW.actor_email IS NOT DISTINCT FROM OLD.actor_email OR NEW.actor_email IS NULL)
       AND (NEW.client_ip IS NOT DISTINCT FROM OLD.client_ip OR NEW.client_ip IS NULL)
       AND (NEW.subject IS NOT DISTINCT FROM OLD.subject OR NEW.subject = 'a deleted user') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'team_audit_log is append-only (an update may only erase personal data)';
END;
$$;
