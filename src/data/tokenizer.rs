//! CLIP's byte-level BPE tokenizer, giving the same ids as OpenCLIP's `SimpleTokenizer`
//! (49,408 tokens: 256 byte symbols, the same 256 closing a word (`</w>`), 48,894 merges,
//! `<start_of_text>` 49406, `<end_of_text>` 49407). Pure computation: it runs in the browser too.
//!
//! Steps: [`clean_caption`] (ftfy, HTML unescape, whitespace, lower case), the pre-tokenizer
//! regex `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`
//! (case-insensitive) written out by hand, then BPE on each piece's UTF-8 bytes.

use crate::data::text_clean::{clean_caption, in_ranges};
use crate::data::unicode_tables::{LETTER, NUMBER, REGEX_SPACE};
use flate2::read::GzDecoder;
use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

/// OpenAI's merges file `bpe_simple_vocab_16e6.txt.gz`, from the open_clip_torch package (MIT).
const MERGES_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// Token count of the full CLIP vocabulary.
pub const CLIP_VOCAB_SIZE: usize = 49_408;
pub const START_OF_TEXT: u32 = 49_406;
pub const END_OF_TEXT: u32 = 49_407;
/// Byte symbols: 256 inside a word, 256 ending one; a reduced vocabulary keeps them when it can.
const BYTE_TOKENS: usize = 512;
/// Merges used by CLIP: lines 1..=48894 of the merges file (line 0 is a version header).
const MERGE_COUNT: usize = CLIP_VOCAB_SIZE - BYTE_TOKENS - 2;
/// Longest pre-token BPE sees in one piece (see [`piece_chunks`]).
const MAX_PIECE_BYTES: usize = 1024;
/// Smallest vocabulary [`Tokenizer::encode`] supports: start, end and one text id.
pub const MIN_VOCAB_SIZE: usize = 3;

const SPECIAL_TOKENS: [(&str, u32); 2] = [
    ("<start_of_text>", START_OF_TEXT),
    ("<end_of_text>", END_OF_TEXT),
];

pub struct Tokenizer {
    /// Vocabulary id of each byte value, as a symbol inside a word; +256 for the word's last.
    byte_id: [u32; 256],
    /// (left id, right id) -> (merge rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Id -> token text in CLIP's byte alphabet, for [`Tokenizer::decode`].
    vocab: Vec<String>,
    /// The inverse of `bytes_to_unicode`, for decoding.
    byte_of_symbol: HashMap<char, u8>,
}

/// CLIP's `bytes_to_unicode`: printable Latin-1 bytes stand for themselves, the others for
/// U+0100 onwards, in this order; the position in the list is the byte's token id.
fn byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut alphabet: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let shifted = (0..=255u8).filter(|&b| !printable(b));
    for (n, b) in shifted.enumerate() {
        alphabet.push((b, char::from_u32(256 + n as u32).unwrap_or('\u{FFFD}')));
    }
    alphabet
}

impl Tokenizer {
    /// Builds the tokenizer from the embedded merges (about 0.1 s); prefer [`Tokenizer::shared`].
    pub fn new() -> Self {
        let mut merges_text = String::new();
        // The embedded file is fixed at build time and checked by the golden tests.
        GzDecoder::new(MERGES_GZ)
            .read_to_string(&mut merges_text)
            .expect("embedded BPE merges decompress");
        let alphabet = byte_alphabet();
        let mut byte_id = [0u32; 256];
        let mut vocab: Vec<String> = Vec::with_capacity(CLIP_VOCAB_SIZE);
        for (id, &(byte, symbol)) in alphabet.iter().enumerate() {
            byte_id[byte as usize] = id as u32;
            vocab.push(symbol.to_string());
        }
        for &(_, symbol) in &alphabet {
            vocab.push(format!("{symbol}</w>"));
        }
        let pairs: Vec<(&str, &str)> = merges_text
            .split('\n')
            .skip(1)
            .take(MERGE_COUNT)
            .filter_map(|line| line.split_once(' '))
            .collect();
        for &(left, right) in &pairs {
            vocab.push(format!("{left}{right}"));
        }
        vocab.extend(SPECIAL_TOKENS.iter().map(|&(text, _)| text.to_string()));
        // Python's dict(zip(vocab, range)) keeps the last id of a repeated string.
        let id_of: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(id, text)| (text.as_str(), id as u32))
            .collect();
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, &(left, right)) in pairs.iter().enumerate() {
            let merged = format!("{left}{right}");
            if let (Some(&l), Some(&r), Some(&m)) = (
                id_of.get(left),
                id_of.get(right),
                id_of.get(merged.as_str()),
            ) {
                merges.entry((l, r)).or_insert((rank as u32, m));
            }
        }
        let byte_of_symbol = alphabet
            .iter()
            .map(|&(byte, symbol)| (symbol, byte))
            .collect();
        Tokenizer {
            byte_id,
            merges,
            vocab,
            byte_of_symbol,
        }
    }

    /// One tokenizer per process, built on first use.
    pub fn shared() -> &'static Tokenizer {
        static SHARED: OnceLock<Tokenizer> = OnceLock::new();
        SHARED.get_or_init(Tokenizer::new)
    }

    /// Token ids of the cleaned text in the full vocabulary, without start/end tokens.
    pub fn encode_ids(&self, text: &str) -> Vec<u32> {
        let cleaned = clean_caption(text);
        let mut ids = Vec::new();
        for piece in pre_tokenize(&cleaned) {
            match SPECIAL_TOKENS
                .iter()
                .find(|&&(special, _)| special == piece)
            {
                Some(&(_, id)) => ids.push(id),
                None => {
                    for chunk in piece_chunks(piece) {
                        self.bpe(chunk.as_bytes(), &mut ids);
                    }
                }
            }
        }
        ids
    }

    /// The ids a text model sees: start token, the text, end token, truncated to `context_length`
    /// keeping the end token last, zero padded; ids are mapped into a vocabulary of `vocab_size`
    /// by [`reduce_token_id`] (unchanged for the full 49,408). `vocab_size` below
    /// [`MIN_VOCAB_SIZE`] is treated as [`MIN_VOCAB_SIZE`].
    pub fn encode(&self, text: &str, context_length: usize, vocab_size: usize) -> Vec<u32> {
        frame_tokens(&self.encode_ids(text), context_length, vocab_size)
    }

    /// Text of full-vocabulary ids (start/end tokens and unknown ids are skipped), words
    /// separated by spaces as OpenCLIP's `decode`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let symbols: String = ids
            .iter()
            .filter(|&&id| id != START_OF_TEXT && id != END_OF_TEXT)
            .filter_map(|&id| self.vocab.get(id as usize))
            .map(String::as_str)
            .collect();
        let mut bytes = Vec::with_capacity(symbols.len());
        for word in symbols.split_inclusive("</w>") {
            let (body, ends_word) = match word.strip_suffix("</w>") {
                Some(body) => (body, true),
                None => (word, false),
            };
            bytes.extend(
                body.chars()
                    .filter_map(|c| self.byte_of_symbol.get(&c).copied()),
            );
            if ends_word {
                bytes.push(b' ');
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// CLIP's `bpe`: start from byte symbols (the last one closing the word) and apply the
    /// lowest-ranked merge present, all its occurrences left to right, until none applies.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        let Some((&last, body)) = piece.split_last() else {
            return;
        };
        let mut word: Vec<u32> = body.iter().map(|&b| self.byte_id[b as usize]).collect();
        word.push(self.byte_id[last as usize] + 256);
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    self.merges
                        .get(&(pair[0], pair[1]))
                        .map(|&(rank, merged)| (rank, pair[0], pair[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend(word);
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Start token + `ids` + end token, truncated to `context_length` keeping the end token last,
/// reduced to `vocab_size` ([`reduce_token_id`]) and zero padded: [`Tokenizer::encode`] after
/// [`Tokenizer::encode_ids`].
pub fn frame_tokens(ids: &[u32], context_length: usize, vocab_size: usize) -> Vec<u32> {
    let mut framed = Vec::with_capacity(context_length.max(ids.len() + 2));
    framed.push(START_OF_TEXT);
    framed.extend_from_slice(ids);
    framed.push(END_OF_TEXT);
    if framed.len() > context_length {
        framed.truncate(context_length);
        if let Some(last) = framed.last_mut() {
            *last = END_OF_TEXT;
        }
    }
    for id in framed.iter_mut() {
        *id = reduce_token_id(*id, vocab_size);
    }
    framed.resize(context_length, 0);
    framed
}

/// Maps a full-vocabulary id into a vocabulary of `vocab_size` (for small presets, e.g. tiny's
/// 1000), deterministically:
/// - `<end_of_text>` becomes `vocab_size - 1`, the highest id (the text tower pools there, M1),
///   and `<start_of_text>` `vocab_size - 2`;
/// - when there is room (`vocab_size > 514`), the 512 byte tokens keep their ids, so every text
///   still has a faithful byte-level spelling;
/// - every other id folds by `512 + (id - 512) mod (vocab_size - 514)`; merges are numbered by
///   frequency, so the most frequent `vocab_size - 514` merges get ids of their own and rarer
///   ones share them;
/// - below that, every text id folds by `id mod (vocab_size - 2)`.
///
/// `vocab_size >= 49,408` leaves ids unchanged; below [`MIN_VOCAB_SIZE`] it counts as that.
pub fn reduce_token_id(id: u32, vocab_size: usize) -> u32 {
    if vocab_size >= CLIP_VOCAB_SIZE {
        return id;
    }
    let vocab = vocab_size.max(MIN_VOCAB_SIZE) as u32;
    let text_ids = vocab - 2;
    match id {
        END_OF_TEXT => vocab - 1,
        START_OF_TEXT => vocab - 2,
        _ if text_ids > BYTE_TOKENS as u32 => {
            let byte_tokens = BYTE_TOKENS as u32;
            if id < byte_tokens {
                id
            } else {
                byte_tokens + (id - byte_tokens) % (text_ids - byte_tokens)
            }
        }
        _ => id % text_ids,
    }
}

/// CLIP's pre-tokenizer regex on cleaned (lower-case) text, leftmost-first like Python's `regex`.
pub fn pre_tokenize(text: &str) -> Vec<&str> {
    let is_letter = |c: char| in_ranges(c, LETTER);
    let is_number = |c: char| in_ranges(c, NUMBER);
    let is_other = |c: char| !in_ranges(c, REGEX_SPACE) && !is_letter(c) && !is_number(c);
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        let Some(first) = rest.chars().next() else {
            break;
        };
        let len = if let Some(&(special, _)) = SPECIAL_TOKENS
            .iter()
            .find(|(special, _)| rest.starts_with(special))
        {
            special.len()
        } else if let Some(len) = contraction_len(rest) {
            len
        } else if is_letter(first) {
            run_len(rest, is_letter)
        } else if is_number(first) {
            first.len_utf8()
        } else if is_other(first) {
            run_len(rest, is_other)
        } else {
            start += first.len_utf8();
            continue;
        };
        pieces.push(&rest[..len]);
        start += len;
    }
    pieces
}

/// A pre-token longer than [`MAX_PIECE_BYTES`] in pieces of at most that many bytes (cut at
/// character boundaries); shorter ones whole. BPE time grows with the square of a piece's
/// length, and no real word is this long, so real captions tokenize exactly as CLIP.
fn piece_chunks(piece: &str) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut rest = piece;
    while rest.len() > MAX_PIECE_BYTES {
        let mut cut = MAX_PIECE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        chunks.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    chunks.push(rest);
    chunks
}

fn run_len(text: &str, class: impl Fn(char) -> bool) -> usize {
    text.char_indices()
        .find(|&(_, c)| !class(c))
        .map_or(text.len(), |(i, _)| i)
}

/// `'s|'t|'re|'ve|'m|'ll|'d` under Python `regex`'s IGNORECASE, where `'ſ` (long s) matches `'s`.
fn contraction_len(text: &str) -> Option<usize> {
    let after = text.strip_prefix('\'')?;
    let mut chars = after.chars();
    let first = chars.next()?;
    let second = chars.next();
    let folded = |c: char| {
        if c == 'ſ' {
            's'
        } else {
            c.to_ascii_lowercase()
        }
    };
    let len = match (folded(first), second.map(folded)) {
        ('s' | 't' | 'm' | 'd', _) => first.len_utf8(),
        ('r' | 'v', Some('e')) | ('l', Some('l')) => 2,
        _ => return None,
    };
    Some(1 + len)
}
