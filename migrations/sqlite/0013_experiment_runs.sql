-- The run of each started experiment: its state, current treatment share and the secret key its
-- assignments are hashed with (shared by every replica, kept across restarts). Starting,
-- widening, stopping and promoting are governance events in the ledger, which keeps the
-- history; this table holds the current state. At most one experiment runs per system.
CREATE TABLE experiment_runs (
    experiment_id      TEXT   NOT NULL,
    experiment_version BIGINT NOT NULL,
    system_id          TEXT   NOT NULL,
    state              TEXT   NOT NULL,
    treatment_ppm      BIGINT NOT NULL,
    assignment_key     TEXT   NOT NULL,
    start_index        BIGINT NOT NULL,
    started_by         TEXT   NOT NULL,
    started_at         TEXT   NOT NULL,
    ended_at           TEXT,
    end_reason         TEXT,
    PRIMARY KEY (experiment_id, experiment_version)
);
CREATE UNIQUE INDEX experiment_runs_one_running_per_system ON experiment_runs (system_id) WHERE state = 'running';
