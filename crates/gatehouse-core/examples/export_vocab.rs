//! Writes an embedded vocabulary in tiktoken's `.tiktoken` format (base64 token, space, rank),
//! so Python tiktoken can load the very same ranks offline and check them against OpenAI's
//! published SHA-256: `cargo run -p gatehouse-core --example export_vocab -- cl100k_base OUT`.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: export_vocab <cl100k_base|o200k_base> <out-file>");
        std::process::exit(2);
    };
    let Some(bpe) = tiktoken::get_encoding(&name) else {
        eprintln!("unknown encoding {name}");
        std::process::exit(2);
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for rank in 0..bpe.vocab_size() as u32 {
        let bytes = bpe.decode(&[rank]);
        writeln!(w, "{} {rank}", base64(&bytes))?;
    }
    w.flush()
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
