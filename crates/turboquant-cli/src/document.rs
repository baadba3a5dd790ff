//! A long document of varied, ordinary prose, generated on demand, with one fact hidden in it.
//!
//! `needle` and `fidelity` need text of any length that a model reads naturally: not one
//! paragraph repeated (copies draw attention to their earlier copies, which is not what long
//! documents look like), and not a file that may be missing. The document describes made-up towns,
//! each paragraph assembled from its own random choices, so no two paragraphs are alike.

use crate::rng::SplitMix64;

/// The hidden fact and how it is asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Needle {
    pub sentence: String,
    pub question: String,
    /// The answer words, in order.
    pub answer: String,
    /// How the answer starts, so the model only has to complete it.
    pub answer_prefix: String,
}

/// Where the numbered needles keep their passphrase; none is a word the filler uses.
const PLACES: [&str; 8] = [
    "archive",
    "vault",
    "boathouse",
    "record office",
    "signal box",
    "counting house",
    "old granary",
    "chapel crypt",
];
const PASS_ADJECTIVES: [&str; 16] = [
    "amber", "silver", "quiet", "crimson", "hollow", "golden", "bitter", "gentle", "frozen",
    "velvet", "copper", "distant", "scarlet", "humble", "ancient", "pale",
];
const PASS_ANIMALS: [&str; 12] = [
    "falcon", "otter", "heron", "badger", "lynx", "raven", "salmon", "beetle", "walrus", "gecko",
    "marten", "osprey",
];
const PASS_OBJECTS: [&str; 12] = [
    "lantern", "compass", "anchor", "violin", "kettle", "ladder", "mirror", "saddle", "thimble",
    "candle", "bucket", "trumpet",
];

impl Needle {
    /// The needle of a place and a three-word passphrase.
    fn new(place: &str, passphrase: &str) -> Needle {
        Needle {
            sentence: format!("The secret passphrase for the {place} is {passphrase}."),
            question: format!("What is the secret passphrase for the {place}?"),
            answer: passphrase.to_string(),
            answer_prefix: format!("The secret passphrase for the {place} is"),
        }
    }

    /// The needle `document` and `fidelity` hide, and needle number 0.
    pub fn reference() -> Needle {
        Needle::new("archive", "amber falcon lantern")
    }

    /// Needle number `i`: 0 is the reference; the others draw a place and a passphrase from `i`,
    /// so trials with different numbers ask for different facts.
    pub fn numbered(i: u64) -> Needle {
        if i == 0 {
            return Needle::reference();
        }
        let mut rng = SplitMix64(0x6E65_6564_6C65 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let place = rng.pick(&PLACES);
        let passphrase = format!(
            "{} {} {}",
            rng.pick(&PASS_ADJECTIVES),
            rng.pick(&PASS_ANIMALS),
            rng.pick(&PASS_OBJECTS)
        );
        Needle::new(place, &passphrase)
    }
}

const NAMES: [&str; 24] = [
    "Aldermoor",
    "Brackenridge",
    "Caldwell",
    "Dunmore",
    "Eastwick",
    "Fernhollow",
    "Glenbrook",
    "Harrowgate",
    "Ivydale",
    "Juniper Falls",
    "Kingsbridge",
    "Larkspur",
    "Millbrook",
    "Northcote",
    "Oakhaven",
    "Pinecrest",
    "Queensford",
    "Ravenscar",
    "Stonehaven",
    "Thornbury",
    "Underhill",
    "Valebrook",
    "Westmere",
    "Yarrowby",
];
const RIVERS: [&str; 10] = [
    "Avon", "Calder", "Derwent", "Esk", "Frome", "Lune", "Nidd", "Ouse", "Tamar", "Wharfe",
];
const INDUSTRIES: [&str; 12] = [
    "fishing",
    "wool weaving",
    "clock making",
    "brewing",
    "shipbuilding",
    "pottery",
    "glass blowing",
    "printing",
    "cheese making",
    "timber",
    "rope making",
    "paper milling",
];
const SIGHTS: [&str; 12] = [
    "a covered market",
    "an old stone bridge",
    "a windmill",
    "a ruined abbey",
    "a botanical garden",
    "a lighthouse",
    "a clock tower",
    "a railway museum",
    "a walled garden",
    "a chain ferry",
    "a library with a painted ceiling",
    "a small observatory",
];
const SEASONS: [&str; 4] = ["spring", "summer", "autumn", "winter"];
const EVENTS: [&str; 10] = [
    "a fair",
    "a rowing race",
    "a music festival",
    "a harvest supper",
    "a lantern parade",
    "a book market",
    "a kite contest",
    "a choir competition",
    "a horse show",
    "a chess tournament",
];
const DIRECTIONS: [&str; 8] = [
    "north",
    "north-east",
    "east",
    "south-east",
    "south",
    "south-west",
    "west",
    "north-west",
];

/// One paragraph about one town.
fn paragraph(rng: &mut SplitMix64) -> String {
    let town = rng.pick(&NAMES);
    let other = rng.pick(&NAMES);
    let year = rng.range(1150, 1890);
    let people = rng.range(2, 90) * 100 + rng.range(0, 99);
    format!(
        "{town} lies {} kilometres {} of {other}, on the banks of the river {}. It was first \
         recorded in {year}, and today its {people} residents live mostly from {} and {}. \
         Visitors come for {} and {}, and in {} the town holds {} that fills every inn for a \
         week. The road from {other} is narrow, and locals still argue about who should pay to \
         widen it.\n\n",
        rng.range(3, 60),
        rng.pick(&DIRECTIONS),
        rng.pick(&RIVERS),
        rng.pick(&INDUSTRIES),
        rng.pick(&INDUSTRIES),
        rng.pick(&SIGHTS),
        rng.pick(&SIGHTS),
        rng.pick(&SEASONS),
        rng.pick(&EVENTS),
    )
}

/// The most paragraphs from `seed` that `fits` accepts together with `needle`'s sentence
/// (`fits` must accept every shorter prefix of what it accepts, as a token budget does). Found by
/// doubling and then bisecting, so a document of n paragraphs costs O(log n) calls of `fits`,
/// which tokenizes: checking after every paragraph made a 32K-token document take seconds.
pub fn paragraphs(
    seed: u64,
    needle: Option<&Needle>,
    mut fits: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    let mut all: Vec<String> = Vec::new();
    let sentence = needle.map(|n| format!("{}\n\n", n.sentence));
    let mut accepts = |all: &mut Vec<String>, k: usize| {
        while all.len() < k {
            all.push(paragraph(&mut rng));
        }
        let mut text = all[..k].concat();
        if let Some(s) = &sentence {
            text.push_str(s);
        }
        fits(&text)
    };
    // the largest k with accepts(k): lo is accepted (0 paragraphs always count as accepted), hi not
    let (mut lo, mut hi) = (0usize, 1usize);
    while accepts(&mut all, hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if accepts(&mut all, mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    all.truncate(lo);
    all
}

/// `paragraphs` with the needle's sentence inserted at `depth` (0: first, 1: last).
pub fn with_needle(paragraphs: &[String], needle: &Needle, depth: f64) -> String {
    let at = ((paragraphs.len() as f64) * depth.clamp(0.0, 1.0)).round() as usize;
    let at = at.min(paragraphs.len());
    format!(
        "{}{}\n\n{}",
        paragraphs[..at].concat(),
        needle.sentence,
        paragraphs[at..].concat()
    )
}

/// The document from `seed` that `fits` accepts, with the reference needle at `depth` if given.
pub fn build(seed: u64, depth: Option<f64>, fits: impl FnMut(&str) -> bool) -> String {
    match depth {
        None => paragraphs(seed, None, fits).concat(),
        Some(depth) => {
            let needle = Needle::reference();
            with_needle(&paragraphs(seed, Some(&needle), fits), &needle, depth)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varied_deterministic_and_the_needle_sits_at_its_depth() {
        let a = build(7, Some(0.5), |t| t.len() < 20_000);
        let b = build(7, Some(0.5), |t| t.len() < 20_000);
        assert_eq!(a, b);
        assert!(a.len() < 20_000 && a.len() > 15_000);
        let needle = Needle::reference();
        let at = a.find(&needle.sentence).unwrap() as f64 / a.len() as f64;
        assert!((0.4..0.6).contains(&at), "needle at {at}");
        let paragraphs: Vec<&str> = a.split("\n\n").filter(|p| !p.is_empty()).collect();
        let mut unique = paragraphs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), paragraphs.len(), "no paragraph repeats");
        let start = build(7, Some(0.0), |t| t.len() < 5_000);
        assert!(start.starts_with(&needle.sentence));
        assert!(!build(7, None, |t| t.len() < 5_000).contains("passphrase"));
    }

    #[test]
    fn the_longest_document_that_fits_is_found() {
        // the same answer as adding paragraphs one by one until the next would not fit
        let needle = Needle::numbered(3);
        for limit in [0, 150, 3_000, 17_321] {
            let fast = paragraphs(5, Some(&needle), |t| t.len() <= limit);
            let mut rng = SplitMix64(5);
            let mut slow: Vec<String> = Vec::new();
            loop {
                let next = paragraph(&mut rng);
                let len: usize = slow.iter().map(String::len).sum::<usize>()
                    + next.len()
                    + needle.sentence.len()
                    + 2;
                if len > limit {
                    break;
                }
                slow.push(next);
            }
            assert_eq!(fast, slow, "limit {limit}");
        }
    }

    #[test]
    fn numbered_needles_differ_and_zero_is_the_reference() {
        assert_eq!(Needle::numbered(0), Needle::reference());
        let answers: Vec<String> = (0..20).map(|i| Needle::numbered(i).answer).collect();
        let mut unique = answers.clone();
        unique.sort();
        unique.dedup();
        assert!(unique.len() >= 19, "{answers:?}");
        let n = Needle::numbered(7);
        assert!(n.sentence.starts_with(&n.answer_prefix));
        assert!(n.sentence.contains(&n.answer));
        assert!(n.question.ends_with('?'));
    }
}
