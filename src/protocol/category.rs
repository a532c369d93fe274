//! Data categories: what Sentry's rate limits and client reports count, derived from item types.
//!
//! A set of categories is a `u32` bit set so that it costs nothing to store with every spooled
//! envelope and to test against the rate-limit table on the dispatch hot path.

use std::fmt;

macro_rules! categories {
    ($($variant:ident = $bit:expr, $name:literal;)*) => {
        /// One Sentry data category, named as Relay names it on the wire.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DataCategory { $(#[doc = concat!("`", $name, "`")] $variant = $bit,)* }

        impl DataCategory {
            /// Every category, in bit order.
            pub const ALL: &'static [DataCategory] = &[$(DataCategory::$variant,)*];

            /// The wire name (`error`, `transaction`, ...).
            pub fn name(self) -> &'static str {
                match self { $(DataCategory::$variant => $name,)* }
            }

            /// Looks a wire name up; unknown names are `None` (and ignored by rate limits).
            pub fn from_name(s: &str) -> Option<DataCategory> {
                match s { $($name => Some(DataCategory::$variant),)* _ => None }
            }
        }
    };
}

categories! {
    Default = 0, "default";
    Error = 1, "error";
    Transaction = 2, "transaction";
    Security = 3, "security";
    Attachment = 4, "attachment";
    AttachmentItem = 5, "attachment_item";
    Session = 6, "session";
    Profile = 7, "profile";
    ProfileChunk = 8, "profile_chunk";
    ProfileChunkUi = 9, "profile_chunk_ui";
    Replay = 10, "replay";
    Monitor = 11, "monitor";
    Span = 12, "span";
    LogItem = 13, "log_item";
    LogByte = 14, "log_byte";
    Feedback = 15, "feedback";
    UserReportV2 = 16, "user_report_v2";
    MetricBucket = 17, "metric_bucket";
    TraceMetric = 18, "trace_metric";
}

/// A set of data categories.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Categories(pub u32);

impl Categories {
    /// The empty set (an envelope of client reports only, or of unknown item types).
    pub const EMPTY: Categories = Categories(0);

    /// Adds one category.
    pub fn insert(&mut self, c: DataCategory) {
        self.0 |= 1 << (c as u32);
    }

    /// Whether the set holds `c`.
    pub fn contains(self, c: DataCategory) -> bool {
        self.0 & (1 << (c as u32)) != 0
    }

    /// Whether no category is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The categories in the set.
    pub fn iter(self) -> impl Iterator<Item = DataCategory> {
        DataCategory::ALL.iter().copied().filter(move |c| self.contains(*c))
    }
}

impl fmt::Debug for Categories {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.name())).finish()
    }
}

impl FromIterator<DataCategory> for Categories {
    fn from_iter<T: IntoIterator<Item = DataCategory>>(iter: T) -> Self {
        let mut set = Categories::EMPTY;
        for c in iter {
            set.insert(c);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in DataCategory::ALL {
            assert_eq!(DataCategory::from_name(c.name()), Some(*c));
        }
        assert_eq!(DataCategory::from_name("nonsense"), None);
    }

    #[test]
    fn set_operations() {
        let s: Categories = [DataCategory::Error, DataCategory::Attachment].into_iter().collect();
        assert!(s.contains(DataCategory::Error));
        assert!(!s.contains(DataCategory::Transaction));
        assert_eq!(format!("{s:?}"), r#"{"error", "attachment"}"#);
        assert!(Categories::EMPTY.is_empty());
    }
}
