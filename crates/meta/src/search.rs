//! The query and paging every search shares (groups by name, users by username or nickname).

use kit::ApiError;
use proto::error::ErrorCode;
use serde::Deserialize;

/// The query of a search (groups by name, users by username or nickname), a page at a time.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// Text to find (in a group's name; in a user's username or nickname), at most 64
    /// characters; empty matches everything.
    #[serde(default)]
    #[param(max_length = 64)]
    q: String,
    /// Results with a greater id (the previous page's `next_after_id`; default 0).
    #[serde(default)]
    #[param(value_type = i64, minimum = 0)]
    after_id: i64,
    /// At most this many (1-100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// Most results on one page of a search (groups or users).
const SEARCH_MAX_LIMIT: u32 = 100;

/// A search's checked query and page: `q` trimmed, at most 64 characters without control
/// characters; `after_id` at least 0; `limit` 1-100 (default 20).
pub(crate) struct SearchPage<'a> {
    pub q: &'a str,
    pub after_id: i64,
    pub limit: u32,
}

impl<'a> SearchPage<'a> {
    pub(crate) fn check(query: &'a SearchQuery) -> Result<Self, ApiError> {
        let (q, after_id) = (query.q.as_str(), query.after_id);
        let limit = query.limit.unwrap_or(20);
        if limit == 0 || limit > SEARCH_MAX_LIMIT || after_id < 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("limit must be 1-{SEARCH_MAX_LIMIT} and after_id >= 0"),
            ));
        }
        if q.chars().count() > 64 || q.chars().any(char::is_control) {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                "q must be at most 64 characters without control characters",
            ));
        }
        Ok(Self {
            q: q.trim(),
            after_id,
            limit,
        })
    }

    /// Cuts what the store found (asked for `limit + 1`) to the page, with the `next_after_id`
    /// to ask for the next one when there is more.
    pub(crate) fn cut<T>(
        &self,
        mut found: Vec<T>,
        id: impl Fn(&T) -> i64,
    ) -> (Vec<T>, Option<i64>) {
        let more = found.len() > self.limit as usize;
        found.truncate(self.limit as usize);
        let next = more.then(|| found.last().map(id)).flatten();
        (found, next)
    }
}
