//! The report as a sequence of [`Block`]s, written twice: as Markdown beside PNG files
//! (`report.md`, `figures/*.png`) and as one self-contained HTML page (`report.html`) whose
//! figures are embedded as `data:image/png;base64,…` so that the page can be opened, mailed or
//! archived alone.

/// One piece of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading of `level` 1–3.
    Heading(u8, String),
    /// A paragraph of plain text (Markdown writes it as is; HTML escapes it).
    Paragraph(String),
    /// A table: a header row and rows of cells.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A figure: its file name under `figures/`, a caption and the PNG bytes.
    Figure {
        /// File name under `figures/`.
        file: String,
        /// The caption (also the image's alternative text).
        caption: String,
        /// The PNG.
        png: Vec<u8>,
    },
}

/// The report as Markdown; figures link to `figures/<file>`.
pub fn markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                s.push_str(&format!("{} {t}\n\n", "#".repeat((*level).clamp(1, 6) as usize)));
            }
            Block::Paragraph(t) => s.push_str(&format!("{t}\n\n")),
            Block::Table(header, rows) => {
                let row = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
                s.push_str(&row(header));
                s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
                for r in rows {
                    s.push_str(&row(r));
                }
                s.push('\n');
            }
            Block::Figure { file, caption, .. } => {
                s.push_str(&format!("![{caption}](figures/{file})\n\n*{caption}*\n\n"));
            }
        }
    }
    s
}

/// `text` with the five HTML special characters escaped.
pub fn escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&#39;"),
            c => s.push(c),
        }
    }
    s
}

/// Standard base64 (RFC 4648 §4, with `=` padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}\
img{max-width:100%;border:1px solid #eee}figcaption{font-style:italic;color:#555}";

/// The report as one HTML page with its figures embedded; `title` is the page's title.
pub fn html(title: &str, blocks: &[Block]) -> String {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    );
    for b in blocks {
        match b {
            Block::Heading(level, t) => {
                let l = (*level).clamp(1, 6);
                s.push_str(&format!("<h{l}>{}</h{l}>\n", escape(t)));
            }
            Block::Paragraph(t) => s.push_str(&format!("<p>{}</p>\n", escape(t))),
            Block::Table(header, rows) => {
                s.push_str("<table>\n<tr>");
                for h in header {
                    s.push_str(&format!("<th>{}</th>", escape(h)));
                }
                s.push_str("</tr>\n");
                for r in rows {
                    s.push_str("<tr>");
                    for c in r {
                        s.push_str(&format!("<td>{}</td>", escape(c)));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
            Block::Figure { file, caption, png } => {
                s.push_str(&format!(
                    "<figure id=\"{}\"><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
                    escape(file),
                    escape(caption),
                    base64(png),
                    escape(caption)
                ));
            }
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648 §10.
    #[test]
    fn base64_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        // every 6-bit value once: the alphabet itself
        let bytes: Vec<u8> = (0u32..16)
            .flat_map(|i| {
                let n = ((4 * i) << 18) | ((4 * i + 1) << 12) | ((4 * i + 2) << 6) | (4 * i + 3);
                [(n >> 16) as u8, (n >> 8) as u8, n as u8]
            })
            .collect();
        assert_eq!(
            base64(&bytes),
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        );
    }

    #[test]
    fn html_escapes_text_and_embeds_figures() {
        let blocks = vec![
            Block::Heading(2, "a <b>".into()),
            Block::Table(vec!["run".into(), "x".into()], vec![vec!["r&1".into(), "0.5".into()]]),
            Block::Figure {
                file: "f.png".into(),
                caption: "cap \"q\"".into(),
                png: b"foo".to_vec(),
            },
        ];
        let h = html("t", &blocks);
        assert!(h.contains("<h2>a &lt;b&gt;</h2>"));
        assert!(h.contains("<td>r&amp;1</td>"));
        assert!(h.contains("src=\"data:image/png;base64,Zm9v\""));
        assert!(h.contains("alt=\"cap &quot;q&quot;\""));
        let m = markdown(&blocks);
        assert!(m.contains("| run | x |\n|---|---|\n| r&1 | 0.5 |"));
        assert!(m.contains("![cap \"q\"](figures/f.png)"));
    }
}
