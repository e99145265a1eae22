#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use quorum_sessions::replica::{apply_merge, MergeMode};
use quorum_sessions::{FieldEntry, Record, Stamp};
#[test]
fn bench_merge() {
    let mut r = Record::new(1_800_000_000_000, 1_900_000_000_000);
    for (i, name) in ["user", "csrf", "theme", "cart:1", "cart:2", "cart:3"]
        .iter()
        .enumerate()
    {
        r.fields.insert(
            name.to_string(),
            FieldEntry::value(
                Stamp::new(1_700_000_000_000 + i as u64, 0, 77),
                vec![1u8; 8],
            ),
        );
    }
    let mut d = Record::new(1_800_000_000_100, 1_900_000_000_000);
    d.partial = true;
    d.fields.insert(
        "theme".into(),
        FieldEntry::value(Stamp::new(1_700_000_001_000, 0, 78), vec![2u8; 8]),
    );
    let t = std::time::Instant::now();
    let mut acc = 0;
    for _ in 0..100_000 {
        let (_s, m) = apply_merge(Some(&r), &d, MergeMode::Upsert, 1_700_000_000_000);
        acc += m.unwrap().fields.len();
    }
    eprintln!("apply_merge: {:?} per op ({acc})", t.elapsed() / 100_000);
    let t = std::time::Instant::now();
    for _ in 0..100_000 {
        let c = r.clone();
        acc += c.fields.len();
    }
    eprintln!("clone: {:?} per op ({acc})", t.elapsed() / 100_000);
    let mut map = std::collections::BTreeMap::new();
    for i in 0..10_000 {
        map.insert(format!("s:{{{i:07}}}"), i);
    }
    let t = std::time::Instant::now();
    for i in 0..100_000 {
        acc += map
            .get(format!("s:{{{:07}}}", i % 10_000).as_str())
            .unwrap();
    }
    eprintln!("lookup+format: {:?} per op ({acc})", t.elapsed() / 100_000);
}
