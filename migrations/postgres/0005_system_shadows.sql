-- Kept in step with migrations/sqlite/0005_system_shadows.sql.
CREATE TABLE system_shadows (
    system_id      TEXT   PRIMARY KEY,
    policy_id      TEXT   NOT NULL,
    policy_version BIGINT NOT NULL,
    attached_by    TEXT   NOT NULL,
    attached_at    TEXT   NOT NULL
);
