//! The current state of a pull request for one conditional GET: the last
//! answer per pull request is remembered with its ETag, and a 304 returns
//! it (free on GitHub's rate limit).
//!
//! Rule kept here: **a remembered pull request is only ever returned on a
//! 304 to its own ETag** — never instead of asking, never after a failed
//! read — so what [`PullRequestReader::current`] returns is what GitHub
//! holds at that moment, however old the cache entry. The memory is
//! bounded (least recently used out), and a pull request GitHub no longer
//! finds is forgotten.

use crate::cache::EtagCache;
use crate::{Error, FetchedPull, PrRef, PullRequest, PullRequests, Result};

/// Reads pull requests through any [`PullRequests`], one conditional GET per
/// [`current`](Self::current).
///
/// One reader per token: GitHub's ETags are specific to the token that
/// read them (another token's ETag just turns the read into a full one).
/// Share it (in an `Arc`) between the tasks reading with that token.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use label_cas::{MemoryPullRequests, PrRef, PullRequest, PullRequestReader};
///
/// let reader = PullRequestReader::new(MemoryPullRequests::new());
/// let pr = PrRef::new("acme", "widgets", 7)?;
/// reader.pulls().set_pull(&pr, PullRequest::open(&"a".repeat(40), "feature")?)?;
///
/// let first = reader.current(&pr).await?; // 200, remembered with its ETag
/// let again = reader.current(&pr).await?; // 304: the remembered answer
/// assert_eq!(first, again);
/// assert_eq!(reader.pulls().calls().not_modified, 1);
/// # Ok::<_, label_cas::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct PullRequestReader<P> {
    pulls: P,
    cache: EtagCache<PullRequest>,
}

impl<P: PullRequests> PullRequestReader<P> {
    /// Pull requests remembered by default.
    ///
    /// Why 4096: the same as the label manager's cache — every open pull
    /// request of a large organisation, a few hundred bytes each.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// A reader over `pulls` remembering up to
    /// [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) pull requests.
    pub fn new(pulls: P) -> Self {
        Self::with_capacity(pulls, Self::DEFAULT_CAPACITY)
    }

    /// A reader remembering up to `capacity` pull requests (0: none, every
    /// read is a full one).
    pub fn with_capacity(pulls: P, capacity: usize) -> Self {
        Self {
            pulls,
            cache: EtagCache::new(capacity),
        }
    }

    /// The backend.
    pub fn pulls(&self) -> &P {
        &self.pulls
    }

    /// `pr` as GitHub holds it now: one GET, conditional when an answer is
    /// remembered (a 304 returns that answer). Errors are the backend's, as
    /// they came (one call, no retry: the caller's retry policy decides,
    /// with [`Error::is_transient`] and [`Error::retry_after`]); a
    /// [`Error::NotFound`] also forgets what was remembered.
    pub async fn current(&self, pr: &PrRef) -> Result<PullRequest> {
        let key = pr.key();
        let cached = self.cache.get(&key);
        let etag = cached.as_ref().map(|(etag, _)| etag);
        let answer = match self.pulls.pull(pr, etag).await {
            Ok(FetchedPull::Pull { pull, etag }) => Some((pull, etag)),
            Ok(FetchedPull::NotModified) => None,
            Err(error @ Error::NotFound { .. }) => {
                self.cache.forget(&key);
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        self.cache.settle(&key, cached, answer)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pulls::MockPullRequests;
    use crate::{ETag, MemoryPullRequests, PullState};

    fn pr(number: u64) -> PrRef {
        PrRef::new("acme", "widgets", number).unwrap()
    }

    fn pull(digit: char) -> PullRequest {
        PullRequest::open(&digit.to_string().repeat(40), "feature").unwrap()
    }

    fn reader_with(
        pulls: &[(u64, char)],
        capacity: usize,
    ) -> PullRequestReader<MemoryPullRequests> {
        let memory = MemoryPullRequests::new();
        for (number, digit) in pulls {
            memory.set_pull(&pr(*number), pull(*digit)).unwrap();
        }
        PullRequestReader::with_capacity(memory, capacity)
    }

    #[tokio::test]
    async fn an_unchanged_pull_request_is_a_304_that_returns_the_remembered_answer() {
        let reader = reader_with(&[(1, 'a')], 8);
        let first = reader.current(&pr(1)).await.unwrap();
        let second = reader.current(&pr(1)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(second.head_sha, "a".repeat(40));
        let calls = reader.pulls().calls();
        assert_eq!((calls.get, calls.not_modified), (2, 1));
    }

    #[tokio::test]
    async fn a_changed_pull_request_is_read_in_full_and_remembered_anew() {
        let reader = reader_with(&[(1, 'a')], 8);
        reader.current(&pr(1)).await.unwrap();
        reader
            .pulls()
            .update(&pr(1), |p| {
                p.head_sha = "b".repeat(40);
                p.state = PullState::Closed;
            })
            .unwrap();
        let changed = reader.current(&pr(1)).await.unwrap();
        assert_eq!(changed.head_sha, "b".repeat(40));
        assert_eq!(changed.state, PullState::Closed);
        // The new answer is what a 304 now stands for.
        assert_eq!(reader.current(&pr(1)).await.unwrap(), changed);
        assert_eq!(reader.pulls().calls().not_modified, 1);
    }

    #[tokio::test]
    async fn the_memory_is_bounded_and_evicts_the_least_recently_read() {
        let reader = reader_with(&[(1, 'a'), (2, 'b'), (3, 'c')], 2);
        for number in [1, 2, 1, 3] {
            reader.current(&pr(number)).await.unwrap();
        }
        assert_eq!(reader.remembered(), 2);
        // 1 was read more recently than 2: 2 went, 1 is still a free 304.
        reader.current(&pr(1)).await.unwrap();
        assert_eq!(reader.pulls().calls().not_modified, 2);
        reader.current(&pr(2)).await.unwrap();
        assert_eq!(reader.pulls().calls().not_modified, 2, "2 was read in full");
    }

    #[tokio::test]
    async fn a_pull_request_that_is_gone_is_not_found_and_forgotten() {
        let reader = reader_with(&[(1, 'a')], 8);
        reader.current(&pr(1)).await.unwrap();
        assert!(reader.pulls().remove(&pr(1)));
        assert!(matches!(
            reader.current(&pr(1)).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(reader.remembered(), 0);
    }

    #[tokio::test]
    async fn a_failed_read_never_returns_the_remembered_answer() {
        let mut mock = MockPullRequests::new();
        let tag = ETag::new("\"1\"").unwrap();
        let answer = FetchedPull::Pull {
            pull: pull('a'),
            etag: Some(tag.clone()),
        };
        let mut seq = mockall::Sequence::new();
        mock.expect_pull()
            .times(1)
            .in_sequence(&mut seq)
            .withf(|_, etag| etag.is_none())
            .return_once(move |_, _| Ok(answer));
        mock.expect_pull()
            .times(1)
            .in_sequence(&mut seq)
            .withf(move |_, etag| *etag == Some(&tag))
            .return_once(|_, _| Err(Error::Server { status: 503 }));
        let reader = PullRequestReader::new(mock);
        reader.current(&pr(1)).await.unwrap();
        let err = reader.current(&pr(1)).await.unwrap_err();
        assert!(matches!(err, Error::Server { status: 503 }) && err.is_transient());
    }

    #[tokio::test]
    async fn a_304_to_an_unconditional_read_is_refused() {
        let mut mock = MockPullRequests::new();
        mock.expect_pull()
            .returning(|_, _| Ok(FetchedPull::NotModified));
        let reader = PullRequestReader::new(mock);
        assert!(matches!(
            reader.current(&pr(1)).await,
            Err(Error::InvalidResponse { .. })
        ));
    }

    #[tokio::test]
    async fn without_an_etag_nothing_is_remembered() {
        let mut mock = MockPullRequests::new();
        mock.expect_pull()
            .times(2)
            .withf(|_, etag| etag.is_none())
            .returning(|_, _| {
                Ok(FetchedPull::Pull {
                    pull: pull('a'),
                    etag: None,
                })
            });
        let reader = PullRequestReader::new(mock);
        reader.current(&pr(1)).await.unwrap();
        reader.current(&pr(1)).await.unwrap();
        assert_eq!(reader.remembered(), 0);
    }
}
