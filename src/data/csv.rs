//! A CSV / TSV reader over raw bytes with pandas' defaults for `read_csv(sep=...)`: a header
//! row, `"`-quoted fields (`""` inside quotes is one quote), blank lines skipped, `\r\n` or `\n`
//! line ends. Fields stay bytes, so a caption that is not UTF-8 is found and counted later.

/// One data row: its 1-based line number in the file and its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvRow {
    pub line: usize,
    pub fields: Vec<Vec<u8>>,
}

/// Splits `text` into rows of fields. Never fails: an unterminated quote runs to the end of the
/// file, as a lenient reader would, and the row then usually has too few columns.
pub fn parse_rows(text: &[u8], separator: u8) -> Vec<CsvRow> {
    let mut rows = Vec::new();
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut field = Vec::new();
    let mut in_quotes = false;
    let mut field_started = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if in_quotes {
            if b == b'"' {
                if text.get(i + 1) == Some(&b'"') {
                    field.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                if b == b'\n' {
                    line += 1;
                }
                field.push(b);
            }
        } else if b == b'"' && !field_started {
            in_quotes = true;
            field_started = true;
        } else if b == separator {
            fields.push(std::mem::take(&mut field));
            field_started = false;
        } else if b == b'\n' || b == b'\r' {
            if b == b'\r' && text.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            fields.push(std::mem::take(&mut field));
            if !(fields.len() == 1 && fields[0].is_empty()) {
                rows.push(CsvRow {
                    line: row_line,
                    fields: std::mem::take(&mut fields),
                });
            }
            fields.clear();
            field_started = false;
            line += 1;
            row_line = line;
        } else {
            field.push(b);
            field_started = true;
        }
        i += 1;
    }
    if field_started || !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        rows.push(CsvRow {
            line: row_line,
            fields,
        });
    }
    rows
}

/// Quotes a field for writing when it holds the separator, a quote or a line break.
pub fn quote_field(field: &str, separator: char) -> String {
    if field.contains([separator, '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}
