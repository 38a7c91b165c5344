//! Writes a synthetic snapshot JSON for benchmarks:
//! `gen_snapshot BUCKETS COPIES MEMBERS NEW_EMPTY_MEMBERS SEED > S.json`.
//! Sizes are heavy-tailed; copies of one bucket go to distinct members in distinct zones
//! (3 zones); the last NEW_EMPTY_MEMBERS members start empty.

use std::io::Write;

use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [buckets, copies, members, empty, seed] = args[..] else {
        eprintln!("usage: gen_snapshot BUCKETS COPIES MEMBERS NEW_EMPTY_MEMBERS SEED");
        std::process::exit(2);
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let loaded = members - empty;
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::new(out.lock());
    write!(w, "{{\"version\":1,\"cluster_id\":\"bench\",\"members\":[").unwrap();
    for m in 0..members {
        let sep = if m == 0 { "" } else { "," };
        write!(w, "{sep}{{\"id\":\"m{m}\",\"address\":\"10.0.{}.{}:7001\",\"zone\":\"z{}\"}}", m / 250, m % 250, m % 3)
            .unwrap();
    }
    write!(w, "],\"buckets\":[").unwrap();
    for b in 0..buckets {
        let u: f64 = rng.gen_range(0.001..1.0);
        let bytes = (100_000.0 * u.powf(-1.0 / 1.5)) as u64;
        let first = rng.gen_range(0..loaded);
        let mut cs = vec![first];
        while (cs.len() as u64) < copies {
            let m = rng.gen_range(0..loaded);
            if cs.iter().all(|&c| c % 3 != m % 3) || loaded < 3 && !cs.contains(&m) {
                cs.push(m);
            }
        }
        let sep = if b == 0 { "" } else { "," };
        let list: Vec<String> = cs.iter().map(|c| format!("\"m{c}\"")).collect();
        write!(w, "{sep}{{\"id\":{b},\"bytes\":{bytes},\"copies\":[{}]}}", list.join(",")).unwrap();
    }
    writeln!(w, "]}}").unwrap();
}
