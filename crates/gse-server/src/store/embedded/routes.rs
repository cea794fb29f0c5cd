//! Data routes (D5) in the embedded store's SQLite file: one row per
//! stream_to and one per channel (data id), each with the data role's JSON
//! document beside its id and platform.
//!
//! New ids are picked inside the insert's transaction ([`NewId::Next`]:
//! one past the largest id of the range, or the lowest free one once the
//! range's last id is taken), so two concurrent adds never get the same id.

use gse_core::seams::state_store::{ChannelRecord, NewId, StreamToRecord};
use rusqlite::{Connection, OptionalExtension, params};

use async_trait::async_trait;
use gse_core::seams::{RouteStore, StoreError};

use super::EmbeddedStore;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS data_stream_tos (
    id        INTEGER PRIMARY KEY,
    plat_name TEXT NOT NULL,
    spec      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS data_channels (
    id        INTEGER PRIMARY KEY,
    plat_name TEXT NOT NULL,
    spec      TEXT NOT NULL
);
";

/// The two tables, so one set of functions serves both.
#[derive(Clone, Copy, Debug)]
pub(super) enum Table {
    StreamTos,
    Channels,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::StreamTos => "data_stream_tos",
            Table::Channels => "data_channels",
        }
    }
}

/// A stored row: (id, plat_name, spec).
pub(super) type Row = (u32, String, String);

/// Inserts a row under the id `id` picks; `None` when it is taken (or the
/// range is full).
pub(super) fn insert(
    conn: &Connection,
    table: Table,
    plat_name: &str,
    spec: &str,
    id: NewId,
) -> rusqlite::Result<Option<u32>> {
    let tx = conn.unchecked_transaction()?;
    let name = table.name();
    let chosen = match id {
        NewId::Given(id) => {
            let taken: Option<i64> = tx
                .query_row(&format!("SELECT id FROM {name} WHERE id = ?1"), [id], |r| {
                    r.get(0)
                })
                .optional()?;
            taken.is_none().then_some(id)
        }
        NewId::Next { first, last } => {
            let max: Option<i64> = tx.query_row(
                &format!("SELECT MAX(id) FROM {name} WHERE id BETWEEN ?1 AND ?2"),
                params![first, last],
                |r| r.get(0),
            )?;
            match max {
                None => Some(first),
                Some(m) if m < i64::from(last) => Some(m as u32 + 1),
                // `last` is taken (a caller may register any id, the top
                // one too): the lowest free id of the range, if any.
                Some(_) => lowest_free(&tx, name, first, last)?,
            }
        }
    };
    let Some(chosen) = chosen else {
        return Ok(None);
    };
    tx.execute(
        &format!("INSERT INTO {name} (id, plat_name, spec) VALUES (?1, ?2, ?3)"),
        params![chosen, plat_name, spec],
    )?;
    tx.commit()?;
    Ok(Some(chosen))
}

/// The lowest id in `first..=last` no row has; `None` when all are taken.
fn lowest_free(
    conn: &Connection,
    name: &str,
    first: u32,
    last: u32,
) -> rusqlite::Result<Option<u32>> {
    let first_taken: Option<i64> = conn
        .query_row(
            &format!("SELECT id FROM {name} WHERE id = ?1"),
            [first],
            |r| r.get(0),
        )
        .optional()?;
    if first_taken.is_none() {
        return Ok(Some(first));
    }
    // One past a taken id whose successor is free; the primary key index
    // answers each probe.
    let gap: Option<i64> = conn.query_row(
        &format!(
            "SELECT MIN(t.id + 1) FROM {name} t WHERE t.id BETWEEN ?1 AND ?2 - 1 \
             AND NOT EXISTS (SELECT 1 FROM {name} u WHERE u.id = t.id + 1)"
        ),
        params![first, last],
        |r| r.get(0),
    )?;
    Ok(gap.and_then(|g| u32::try_from(g).ok()))
}

/// Replaces a row's platform and document; `false` if there is none.
pub(super) fn replace(
    conn: &Connection,
    table: Table,
    id: u32,
    plat_name: &str,
    spec: &str,
) -> rusqlite::Result<bool> {
    let n = conn.execute(
        &format!(
            "UPDATE {} SET plat_name = ?2, spec = ?3 WHERE id = ?1",
            table.name()
        ),
        params![id, plat_name, spec],
    )?;
    Ok(n > 0)
}

/// Deletes a row; `false` if there was none.
pub(super) fn delete(conn: &Connection, table: Table, id: u32) -> rusqlite::Result<bool> {
    let n = conn.execute(&format!("DELETE FROM {} WHERE id = ?1", table.name()), [id])?;
    Ok(n > 0)
}

/// Every row, by id.
pub(super) fn list(conn: &Connection, table: Table) -> rusqlite::Result<Vec<Row>> {
    conn.prepare_cached(&format!(
        "SELECT id, plat_name, spec FROM {} ORDER BY id",
        table.name()
    ))?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

pub(super) fn stream_to((stream_to_id, plat_name, spec): Row) -> StreamToRecord {
    StreamToRecord {
        stream_to_id,
        plat_name,
        spec,
    }
}

pub(super) fn channel((channel_id, plat_name, spec): Row) -> ChannelRecord {
    ChannelRecord {
        channel_id,
        plat_name,
        spec,
    }
}

#[async_trait]
impl RouteStore for EmbeddedStore {
    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.with_db("adding a stream_to", move |c| {
            insert(c, Table::StreamTos, &record.plat_name, &record.spec, id)
        })
        .await
    }

    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError> {
        self.with_db("updating a stream_to", move |c| {
            let StreamToRecord {
                stream_to_id,
                plat_name,
                spec,
            } = &record;
            replace(c, Table::StreamTos, *stream_to_id, plat_name, spec)
        })
        .await
    }

    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError> {
        self.with_db("deleting a stream_to", move |c| {
            delete(c, Table::StreamTos, stream_to_id)
        })
        .await
    }

    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        let rows = self
            .with_db("listing stream_tos", |c| list(c, Table::StreamTos))
            .await?;
        Ok(rows.into_iter().map(stream_to).collect())
    }

    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.with_db("adding a data channel", move |c| {
            insert(c, Table::Channels, &record.plat_name, &record.spec, id)
        })
        .await
    }

    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError> {
        self.with_db("updating a data channel", move |c| {
            let ChannelRecord {
                channel_id,
                plat_name,
                spec,
            } = &record;
            replace(c, Table::Channels, *channel_id, plat_name, spec)
        })
        .await
    }

    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError> {
        self.with_db("deleting a data channel", move |c| {
            delete(c, Table::Channels, channel_id)
        })
        .await
    }

    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let rows = self
            .with_db("listing data channels", |c| list(c, Table::Channels))
            .await?;
        Ok(rows.into_iter().map(channel).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    #[test]
    fn next_ids_start_at_first_and_stop_at_last() {
        let conn = db();
        let next = NewId::Next {
            first: 500,
            last: 502,
        };
        let ins = |id| insert(&conn, Table::StreamTos, "bkmonitor", "{}", id).unwrap();
        assert_eq!(ins(next), Some(500));
        assert_eq!(ins(next), Some(501));
        // An id given outside the range does not move the range.
        assert_eq!(ins(NewId::Given(7)), Some(7));
        assert_eq!(ins(next), Some(502));
        assert_eq!(ins(next), None, "range full");
        assert_eq!(ins(NewId::Given(7)), None, "taken");
        assert_eq!(list(&conn, Table::StreamTos).unwrap().len(), 4);
    }

    #[test]
    fn a_caller_taking_the_last_id_does_not_exhaust_the_range() {
        let conn = db();
        let next = NewId::Next {
            first: 100,
            last: 1_000_000,
        };
        let ins = |id| insert(&conn, Table::Channels, "bkmonitor", "{}", id).unwrap();
        // add_route with metadata.channel_id at the top of the range.
        assert_eq!(ins(NewId::Given(1_000_000)), Some(1_000_000));
        assert_eq!(ins(next), Some(100), "the range is nearly all free");
        assert_eq!(ins(next), Some(101));
        assert_eq!(ins(NewId::Given(103)), Some(103));
        assert_eq!(ins(next), Some(102));
        assert_eq!(ins(next), Some(104));
        // Truly full ranges are still refused.
        let small = NewId::Next { first: 7, last: 8 };
        assert_eq!(ins(NewId::Given(8)), Some(8));
        assert_eq!(ins(small), Some(7));
        assert_eq!(ins(small), None);
    }

    #[test]
    fn tables_are_separate_and_rows_replace_and_delete() {
        let conn = db();
        let given = NewId::Given(1001);
        assert_eq!(
            insert(&conn, Table::Channels, "bkmonitor", "{\"v\":1}", given).unwrap(),
            Some(1001)
        );
        assert_eq!(
            insert(&conn, Table::StreamTos, "bkmonitor", "{}", given).unwrap(),
            Some(1001)
        );
        assert!(replace(&conn, Table::Channels, 1001, "bkmonitor", "{\"v\":2}").unwrap());
        assert!(!replace(&conn, Table::Channels, 9, "x", "{}").unwrap());
        let rows = list(&conn, Table::Channels).unwrap();
        assert_eq!(rows, vec![(1001, "bkmonitor".into(), "{\"v\":2}".into())]);
        assert!(delete(&conn, Table::Channels, 1001).unwrap());
        assert!(!delete(&conn, Table::Channels, 1001).unwrap());
        assert!(list(&conn, Table::Channels).unwrap().is_empty());
        assert_eq!(list(&conn, Table::StreamTos).unwrap().len(), 1);
    }
}
