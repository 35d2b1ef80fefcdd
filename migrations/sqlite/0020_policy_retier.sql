-- Re-tier passes of policy applies (docs/policy-and-migration.md, "Tier rules in a policy
-- apply"): an apply whose tier rules move accounts records its version here before it commits
-- it, and marks it done when its pass has moved every account. A pass that a crash cut short
-- stays due (done_ms NULL), and the migration supervisor of any replica on that version or a
-- later one runs it again (one at a time, under the lease `policy-retier`).
CREATE TABLE policy_retier (
    version    INTEGER NOT NULL PRIMARY KEY,
    due_ms     INTEGER NOT NULL,
    done_ms    INTEGER
) STRICT;
