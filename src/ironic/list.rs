//! Fleet-wide reads: every node, connector and target in a few paginated list calls.
//!
//! The reconciler's periodic fleet sync reads Ironic this way instead of three GETs per host.
//! Pages are requested with `limit` and continued with `marker` (the last UUID of the page)
//! while Ironic announces a `next` page. We rebuild the next URL ourselves rather than
//! following Ironic's link: the link is built from Ironic's idea of its public URL, which
//! behind a proxy or a Service need not be the URL we use.

use super::{Connector, Error, IronicClient, NODE_FIELDS, Node, Target};
use reqwest::Method;
use serde::{Deserialize, de::DeserializeOwned};

/// Rows asked for per page: Ironic's default `[api] max_limit` (a larger value is clamped).
pub const PAGE_SIZE: usize = 1000;
/// Bound on pages per list (10 million rows at the default page size).
const MAX_PAGES: usize = 10_000;
/// A page of a thousand rows takes a busy Ironic far longer than one node: it gets this many
/// times the client's per-request timeout. (At 5,000 nodes, with Ironic's one core saturated
/// by writes, node pages took over 30 s and every fleet sync failed.)
const PAGE_TIMEOUT_FACTOR: u32 = 4;

/// One page of a list: the rows (under the collection's key) and whether more follow.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(alias = "nodes", alias = "connectors", alias = "targets")]
    items: Vec<T>,
    #[serde(default)]
    next: Option<String>,
}

/// Everything a list returned, and how many requests it took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing<T> {
    /// All rows, in Ironic's order.
    pub items: Vec<T>,
    /// Requests made (pages read).
    pub pages: usize,
}

trait HasUuid {
    fn uuid(&self) -> &str;
}

impl HasUuid for Node {
    fn uuid(&self) -> &str {
        &self.uuid
    }
}
impl HasUuid for Connector {
    fn uuid(&self) -> &str {
        &self.uuid
    }
}
impl HasUuid for Target {
    fn uuid(&self) -> &str {
        &self.uuid
    }
}

impl IronicClient {
    /// Every node, with [`NODE_FIELDS`] only.
    pub async fn list_all_nodes(&self, page_size: usize) -> Result<Listing<Node>, Error> {
        self.list_nodes_until(page_size, |_| false).await
    }

    /// Nodes page by page until `enough` says the pages so far hold every node the caller
    /// needs (it sees each page once, in order), or the list ends. Ironic announces a next
    /// page whenever a page is full, so without this a fleet of exactly 1,000 nodes costs a
    /// second, empty page.
    pub async fn list_nodes_until(
        &self,
        page_size: usize,
        enough: impl FnMut(&[Node]) -> bool,
    ) -> Result<Listing<Node>, Error> {
        self.list_pages(&format!("/v1/nodes?fields={NODE_FIELDS}"), page_size, enough)
            .await
    }

    /// Every volume connector of every node, with `extra`.
    pub async fn list_all_connectors(&self, page_size: usize) -> Result<Listing<Connector>, Error> {
        self.list_pages("/v1/volume/connectors?detail=true", page_size, |_| false)
            .await
    }

    /// Every volume target of every node, with properties (password masked) and `extra`.
    pub async fn list_all_targets(&self, page_size: usize) -> Result<Listing<Target>, Error> {
        self.list_pages("/v1/volume/targets?detail=true", page_size, |_| false)
            .await
    }

    async fn list_pages<T: DeserializeOwned + HasUuid>(
        &self,
        first: &str,
        page_size: usize,
        mut enough: impl FnMut(&[T]) -> bool,
    ) -> Result<Listing<T>, Error> {
        let limit = page_size.clamp(1, PAGE_SIZE);
        let mut out = Listing {
            items: Vec::new(),
            pages: 0,
        };
        let mut marker: Option<String> = None;
        while out.pages < MAX_PAGES {
            let path = page_path(first, limit, marker.as_deref());
            let text = self
                .raw_within(
                    Method::GET,
                    &path,
                    None::<&()>,
                    Some(self.timeout.saturating_mul(PAGE_TIMEOUT_FACTOR)),
                )
                .await?;
            let page: Page<T> = super::decode(&path, &text)?;
            out.pages += 1;
            let more = page.next.is_some_and(|n| !n.is_empty()) && !page.items.is_empty();
            marker = page.items.last().map(|t| t.uuid().to_owned());
            let done = enough(&page.items);
            out.items.extend(page.items);
            if !more || done {
                return Ok(out);
            }
        }
        Err(Error::Decode {
            message: format!("{first}: more than {MAX_PAGES} pages"),
        })
    }
}

/// `first` plus `limit` and, after the first page, `marker`.
fn page_path(first: &str, limit: usize, marker: Option<&str>) -> String {
    let mut path = format!("{first}&limit={limit}");
    if let Some(m) = marker {
        path.push_str("&marker=");
        path.push_str(&super::encode_segment(m));
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_carry_limit_and_the_marker_of_the_last_row() {
        assert_eq!(
            page_path("/v1/volume/targets?detail=true", 1000, None),
            "/v1/volume/targets?detail=true&limit=1000"
        );
        assert_eq!(
            page_path("/v1/nodes?fields=uuid", 2, Some("a-b")),
            "/v1/nodes?fields=uuid&limit=2&marker=a-b"
        );
    }

    #[test]
    fn a_page_reads_under_any_collection_key() {
        let p: Page<Connector> = serde_json::from_value(json!({
            "connectors": [{"uuid": "c", "type": "iqn", "connector_id": "i"}],
            "next": "http://x/v1/volume/connectors?limit=1&marker=c"
        }))
        .unwrap();
        assert_eq!((p.items.len(), p.next.is_some()), (1, true));
        let p: Page<Node> = serde_json::from_value(json!({"nodes": []})).unwrap();
        assert!(p.items.is_empty() && p.next.is_none());
    }
}
