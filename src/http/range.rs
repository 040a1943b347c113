//! `Range` requests on blobs (RFC 9110 §14; distribution-spec end-2 allows
//! them): one `bytes=` range, in any of its three forms.

use std::ops::Range;

#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header: send the whole blob. (RFC 9110 says to
    /// ignore one that cannot be parsed, or asks for several ranges.)
    Whole,
    /// Send these bytes with 206.
    Partial(Range<u64>),
    /// Nothing of the blob lies in the range: 416.
    Unsatisfiable,
}

pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = super::decimal::<u64>;
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => RangeRequest::Partial(size.saturating_sub(n)..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // bytes=A-: from A to the end.
        (false, true) => match number(first) {
            Some(a) if a < size => RangeRequest::Partial(a..size),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // bytes=A-B: inclusive, B clamped to the end.
        (false, false) => match (number(first), number(last)) {
            // RFC 9110 would ignore an inverted range; the conformance suite
            // (like Go's net/http) wants 416, which tells a buggy client more.
            (Some(a), Some(b)) if a > b => RangeRequest::Unsatisfiable,
            (Some(a), Some(b)) if a < size => RangeRequest::Partial(a..b.min(size - 1) + 1),
            (Some(_), Some(_)) => RangeRequest::Unsatisfiable,
            _ => RangeRequest::Whole,
        },
        (true, true) => RangeRequest::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn the_three_forms_and_their_edges() {
        assert_eq!(parse(Some("bytes=0-0"), 10), Partial(0..1));
        assert_eq!(parse(Some("bytes=2-5"), 10), Partial(2..6));
        assert_eq!(parse(Some("bytes=5-100"), 10), Partial(5..10));
        assert_eq!(parse(Some("bytes=7-"), 10), Partial(7..10));
        assert_eq!(parse(Some("bytes=-3"), 10), Partial(7..10));
        assert_eq!(parse(Some("bytes=-30"), 10), Partial(0..10));
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Whole);
        assert_eq!(parse(Some("items=0-1"), 10), Whole);
        assert_eq!(parse(Some("bytes=x-1"), 10), Whole);
        assert_eq!(parse(None, 10), Whole);
    }
}
