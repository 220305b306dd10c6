//! The two back-ends' migration lists, held to each other: the same
//! versions 1..=N, numbered alike in their comments, and version N of each
//! makes the same tables, columns and indexes (in its own types). That a
//! migrated database of either back-end reports version N is checked by
//! `tests/integration/store.rs` (`migrations_are_versioned_and_rerun_safely`).

use std::collections::{BTreeMap, BTreeSet};

use super::{postgres, sqlite};

/// Columns only PostgreSQL has, with why.
const POSTGRES_ONLY: &[(&str, &str)] = &[
    // `seq` keeps the captures in the order they were made
    // (`postgres::ledger::all`; SQLite orders by their UUIDv7 transaction ids).
    ("sandbox_charges", "seq"),
];

/// Tables SQLite rebuilds where PostgreSQL has nothing to change:
/// Version 16 rebuilds them `WITHOUT ROWID`; PostgreSQL has no rowids.
const SQLITE_ONLY_RESHAPES: &[&str] = &["carts", "idempotency"];

/// What one migration makes.
#[derive(Debug, Default, PartialEq, Eq)]
struct Made {
    /// Tables created, with their columns.
    tables: BTreeMap<String, BTreeSet<String>>,
    /// Indexes created, with their table.
    indexes: BTreeMap<String, String>,
    /// Indexes dropped.
    dropped: BTreeSet<String>,
    /// Tables dropped.
    dropped_tables: BTreeSet<String>,
    /// Columns added to a table (`ALTER TABLE … ADD COLUMN`).
    added: BTreeSet<(String, String)>,
    /// Functions created: PostgreSQL's only (the SQLite back-end runs that
    /// code in the process), so not compared.
    functions: BTreeSet<String>,
    /// Tables whose storage or constraints change, their columns kept: a
    /// SQLite rebuild (a new table, its rows copied, the old one dropped,
    /// the new one renamed) or PostgreSQL's `DROP CONSTRAINT`.
    reshaped: BTreeSet<String>,
    /// SQLite's rebuilt tables with their columns, held to the columns the
    /// table had before (not compared: PostgreSQL alters in place).
    rebuilt: BTreeMap<String, BTreeSet<String>>,
    /// Indexes a SQLite rebuild makes again (dropped with the old table),
    /// with their table: held to the indexes the table had before.
    restored: BTreeMap<String, String>,
}

/// The tables and indexes that versions 1..=N of one back-end have made.
#[derive(Debug, Default)]
struct Schema {
    tables: BTreeMap<String, BTreeSet<String>>,
    indexes: BTreeMap<String, String>,
}

impl Schema {
    /// Applies one version, checking that what it rebuilds keeps the
    /// columns and indexes it had.
    fn apply(&mut self, version: usize, made: &Made) {
        for (table, columns) in &made.rebuilt {
            assert_eq!(self.tables.get(table), Some(columns), "version {version} rebuilds {table} with other columns");
        }
        for (index, table) in &made.restored {
            assert_eq!(
                self.indexes.get(index),
                Some(table),
                "version {version} makes {index} on the rebuilt {table}, which did not have it"
            );
        }
        for table in &made.dropped_tables {
            self.tables.remove(table);
            self.indexes.retain(|_, on| on != table);
        }
        for index in &made.dropped {
            self.indexes.remove(index);
        }
        self.tables.extend(made.tables.clone());
        self.indexes.extend(made.indexes.clone());
        for (table, column) in &made.added {
            self.tables.entry(table.clone()).or_default().insert(column.clone());
        }
    }
}

/// `sql` without the bodies of its dollar-quoted strings (`$$ … $$`, a
/// function's code): their semicolons end no statement of the migration.
fn without_dollar_quotes(sql: &str) -> String {
    let mut out = String::new();
    let mut parts = sql.split("$$");
    while let Some(outside) = parts.next() {
        out.push_str(outside);
        if parts.next().is_some() {
            out.push_str("$$ $$");
        }
    }
    out
}

/// A name as written, quotes (`"offset"`) removed.
fn name(token: &str) -> String {
    token.trim_matches('"').to_string()
}

/// The column definitions of a `CREATE TABLE`: what is between its first
/// parenthesis and the matching one, split at the commas outside parentheses.
fn definitions(statement: &str) -> Vec<String> {
    let open = statement.find('(').expect("a table without columns");
    let mut depth = 0;
    let mut current = String::new();
    let mut out = Vec::new();
    for c in statement[open + 1..].chars() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out
}

fn made(sql: &str) -> Made {
    let sql: String = sql.lines().map(|line| line.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let sql = without_dollar_quotes(&sql);
    let mut made = Made::default();
    for statement in sql.split(';') {
        let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let words: Vec<&str> = statement.split(' ').collect();
        match words.as_slice() {
            [""] => {}
            ["CREATE", "TABLE", table, ..] => {
                let table = name(table.split('(').next().unwrap_or(table));
                let columns = definitions(&statement)
                    .iter()
                    .filter_map(|definition| definition.split_whitespace().next().map(name))
                    .filter(|first| {
                        !matches!(first.as_str(), "PRIMARY" | "UNIQUE" | "CHECK" | "FOREIGN" | "CONSTRAINT")
                    })
                    .collect();
                assert!(made.tables.insert(table.clone(), columns).is_none(), "{table} created twice");
            }
            ["CREATE", "INDEX", index, "ON", table, ..] | ["CREATE", "UNIQUE", "INDEX", index, "ON", table, ..] => {
                let table = name(table);
                if made.rebuilt.contains_key(&table) {
                    made.restored.insert(name(index), table);
                } else {
                    made.indexes.insert(name(index), table);
                }
            }
            ["DROP", "INDEX", index] => {
                made.dropped.insert(name(index));
            }
            ["DROP", "TABLE", table] => {
                made.dropped_tables.insert(name(table));
            }
            // Move rows between the shapes of a table (see versions 12 and
            // 16), or a rebuilt table's counter: what they make is in the
            // statements around them.
            ["UPDATE", ..] | ["INSERT", "INTO", ..] | ["DELETE", "FROM", ..] => {}
            // The last step of a SQLite rebuild: the new table takes the
            // dropped one's name.
            ["ALTER", "TABLE", new, "RENAME", "TO", old] => {
                let (new, old) = (name(new), name(old));
                let columns = made.tables.remove(&new).unwrap_or_else(|| panic!("{new} renamed but not made here"));
                assert!(
                    made.dropped_tables.remove(&old),
                    "{new} renamed to {old}, which was not dropped: not a rebuild"
                );
                made.rebuilt.insert(old.clone(), columns);
                made.reshaped.insert(old);
            }
            ["ALTER", "TABLE", table, "DROP", "CONSTRAINT", _] => {
                made.reshaped.insert(name(table));
            }
            ["ALTER", "TABLE", table, "ADD", "COLUMN", column, ..] => {
                made.added.insert((name(table), name(column)));
            }
            ["CREATE", "FUNCTION", function, ..]
            | ["CREATE", "OR", "REPLACE", "FUNCTION", function, ..]
            | ["DROP", "FUNCTION", function, ..] => {
                made.functions.insert(name(function.split('(').next().unwrap_or(function)));
            }
            // A version with nothing to make on one back-end (see SQLite's 8).
            ["SELECT", "1"] => {}
            _ => panic!("a statement these tests do not know how to compare: {statement}"),
        }
    }
    made
}

/// The version numbers of the `// N: …` comments that open the entries of
/// the `MIGRATIONS` list in `source`.
fn commented_versions(source: &str) -> Vec<usize> {
    let start = source.find("const MIGRATIONS").expect("a MIGRATIONS list");
    let list = &source[start..];
    let list = &list[..list.find("\n];").expect("the end of the MIGRATIONS list")];
    list.lines()
        .filter_map(|line| line.trim().strip_prefix("// "))
        .filter_map(|comment| comment.split_once(':'))
        .filter_map(|(number, _)| number.parse().ok())
        .collect()
}

#[test]
fn both_back_ends_have_the_same_migration_versions() {
    let (lite, pg) = (sqlite::schema::MIGRATIONS, postgres::schema::MIGRATIONS);
    assert_eq!(lite.len(), pg.len(), "SQLite has {} migrations, PostgreSQL {}", lite.len(), pg.len());
    let versions: Vec<usize> = (1..=lite.len()).collect();
    assert_eq!(commented_versions(include_str!("sqlite/schema.rs")), versions, "the SQLite list's `// N:` comments");
    assert_eq!(
        commented_versions(include_str!("postgres/schema.rs")),
        versions,
        "the PostgreSQL list's `// N:` comments"
    );
}

#[test]
fn each_version_makes_the_same_tables_columns_and_indexes_on_both_back_ends() {
    let mut lite_schema = Schema::default();
    for (index, (lite, pg)) in sqlite::schema::MIGRATIONS.iter().zip(postgres::schema::MIGRATIONS).enumerate() {
        let version = index + 1;
        let mut lite = made(lite);
        let mut pg = made(pg);
        lite_schema.apply(version, &lite);
        lite.rebuilt.clear();
        lite.restored.clear();
        for table in SQLITE_ONLY_RESHAPES {
            lite.reshaped.remove(*table);
        }
        for (table, column) in POSTGRES_ONLY {
            if let Some(columns) = pg.tables.get_mut(*table) {
                columns.remove(*column);
            }
        }
        let functions = std::mem::take(&mut pg.functions);
        assert!(
            lite != Made::default() || !functions.is_empty(),
            "version {version} makes nothing these tests can see: is the parser still reading it?"
        );
        assert_eq!(lite, pg, "version {version}: SQLite (left) and PostgreSQL (right) differ");
    }
}

#[test]
fn the_comparison_sees_a_difference() {
    let lite = made("CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER CHECK (b > 0), PRIMARY KEY (a, b));");
    assert_eq!(lite.tables["t"], BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_ne!(lite, made("CREATE TABLE t (a TEXT PRIMARY KEY, c BIGINT);"));
    let index = made(
        "CREATE INDEX i ON t (a) WHERE a != 'x'; -- a comment; with a semicolon\nALTER TABLE t ADD COLUMN \"d\" TEXT;",
    );
    assert_eq!(index.indexes["i"], "t");
    assert!(index.added.contains(&("t".to_string(), "d".to_string())));
    let function = made("CREATE FUNCTION f(a TEXT) RETURNS TEXT LANGUAGE plpgsql AS $$ BEGIN RETURN a; END $$;");
    assert_eq!(function.functions, BTreeSet::from(["f".to_string()]));
    assert!(function.tables.is_empty());
    assert_ne!(made("DROP TABLE t; UPDATE u SET a = 1;"), made("UPDATE u SET a = 1;"));
    let rebuild = made(
        "CREATE TABLE t_new (a TEXT PRIMARY KEY, b INTEGER) WITHOUT ROWID; INSERT INTO t_new (a, b) SELECT a, b FROM t;
         DROP TABLE t; ALTER TABLE t_new RENAME TO t; CREATE INDEX t_by_b ON t (b);",
    );
    assert!(rebuild.tables.is_empty() && rebuild.indexes.is_empty() && rebuild.dropped_tables.is_empty());
    assert_eq!(rebuild.rebuilt["t"], BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert_eq!(rebuild.restored["t_by_b"], "t");
    assert_eq!(rebuild.reshaped, made("ALTER TABLE t DROP CONSTRAINT t_b_key;").reshaped);
    // A rebuild is held to what the table had before it.
    let mut before = Schema::default();
    before.apply(1, &made("CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER); CREATE INDEX t_by_b ON t (b);"));
    before.apply(2, &rebuild);
    let lost_a_column = made("CREATE TABLE t_new (a TEXT PRIMARY KEY); DROP TABLE t; ALTER TABLE t_new RENAME TO t;");
    assert!(std::panic::catch_unwind(move || before.apply(3, &lost_a_column)).is_err());
}
