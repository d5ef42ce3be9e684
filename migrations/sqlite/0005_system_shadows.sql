-- The policy bundle version evaluated in shadow beside each system's own policy (at most one
-- per system). Attaching and detaching are governance events in the ledger, which keeps the
-- history; this table holds only the current state.
CREATE TABLE system_shadows (
    system_id      TEXT   PRIMARY KEY,
    policy_id      TEXT   NOT NULL,
    policy_version BIGINT NOT NULL,
    attached_by    TEXT   NOT NULL,
    attached_at    TEXT   NOT NULL
);
