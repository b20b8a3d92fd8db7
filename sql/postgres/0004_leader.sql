-- kobo schema on PostgreSQL: the leader row. Coordinators sharing one
-- database elect a leader with a session advisory lock
-- (queue/src/leader.rs); the winner bumps `epoch` here and advertises its
-- address. Every write transaction of a leader first reads this row
-- (`SELECT epoch ... FOR SHARE`) and refuses to write when the epoch is no
-- longer its own: a deposed leader writes nothing.
-- One row, id 1, created here at epoch 0 (no leader yet).

CREATE TABLE kobo_leader (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    epoch    BIGINT NOT NULL CHECK (epoch >= 0),
    address  TEXT NOT NULL,           -- the leader's advertised URL, '' at epoch 0
    holder   TEXT NOT NULL,           -- who holds it: host and process, for people
    since    BIGINT NOT NULL          -- when it took over, ms since the Unix epoch
);

INSERT INTO kobo_leader (id, epoch, address, holder, since) VALUES (1, 0, '', '', 0);
