//! Every statement `pg-backend/src/pg/sql.rs` defines has a model in the
//! simulated server and a signature from a real server, so SQL and model
//! cannot drift apart silently: a new statement fails here until it is
//! modelled (and `signatures.txt` is blessed).

use duropg::testing::internals::Sql;
use duropg_sim::wire::{exec, signature};

/// Statements the server itself carries out instead of a table model.
const SERVER_OWN: &[&str] = &["begin", "commit", "rollback", "listen"];

#[test]
fn every_statement_has_a_model_and_a_signature() {
    let mut missing = Vec::new();
    for (name, _) in Sql::templates() {
        if exec::model(name).is_none() && !SERVER_OWN.contains(name) {
            missing.push(format!("{name}: no model in sim/src/wire/exec"));
        }
        if signature::of(name).is_none() {
            missing.push(format!("{name}: no line in sim/src/wire/signatures.txt"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
    assert_eq!(
        signature::all().len(),
        Sql::templates().len(),
        "signatures.txt names a statement sql.rs lacks"
    );
}
