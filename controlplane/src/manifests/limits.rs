//! Limits a manifest file must keep before the YAML parser sees it.
//!
//! The YAML scanner tpvs uses (libyaml's, through serde_yaml) keeps one entry per open flow
//! collection (`[`, `{`) and walks all of them for every token, so its cost grows with the square
//! of the nesting depth: 100 KB of `[` cost seconds of CPU, and every reload paid it again. The
//! checks here are one linear pass over the text that finds the deepest nesting and the number
//! of documents the way that scanner would see them (quotes, comments, block scalars and plain
//! scalars are skipped, so brackets inside strings do not count), and stop at the first limit
//! broken. A file that breaks a limit is an error like a syntax error: it keeps its last good
//! objects.

/// How big, deep and long a manifest file may be. The defaults are well beyond what
/// `kubectl get svc,endpointslices -A -o yaml` prints for a large cluster (49 MB for 10 000
/// Services with 100 000 endpoints, 11 levels deep counting `managedFields`, one document:
/// see `measure_a_large_cluster`), and far below what would stall the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Deepest nesting of mappings and sequences, block and flow together.
    pub max_depth: usize,
    /// Most YAML documents (`---`-separated) in one file.
    pub max_documents: usize,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits { max_file_bytes: 128 << 20, max_depth: 64, max_documents: 100_000 }
    }
}

/// A limit a text breaks: the first one found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Broken {
    /// Nesting deeper than the limit, first reached in this document (from 1) and line (from 1).
    Depth { document: usize, line: usize },
    /// More documents than the limit.
    Documents,
}

/// Checks the nesting depth and document count of `text` in one pass, without parsing it.
pub(super) fn check(text: &str, limits: &ManifestLimits) -> Result<(), Broken> {
    let mut scan = Scanner::default();
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((number, line)) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if scan.in_block_scalar(line) {
            continue;
        }
        scan.line(line);
        if scan.documents > limits.max_documents {
            return Err(Broken::Documents);
        }
        if scan.max_depth > limits.max_depth {
            return Err(Broken::Depth { document: scan.documents.max(1), line: number + 1 });
        }
        // A block scalar's header decides how the lines after it are read.
        if let Some(header) = scan.block_scalar.take() {
            scan.start_block_scalar(header, lines.peek().map(|(_, l)| *l));
        }
    }
    Ok(())
}

/// What a block scalar header (`|`, `>-`, `|2`…) said, and where its parent node stands.
#[derive(Clone, Copy, Debug)]
struct BlockHeader {
    explicit: Option<usize>,
    parent: Option<usize>,
}

/// The state of the scan between lines. It follows libyaml's scanner: block indentation
/// levels (`indents`), open flow collections (`flow`), and the multi-line constructs whose
/// content is not structure (quoted scalars, plain scalars continued on the next line, block
/// scalars).
#[derive(Debug, Default)]
struct Scanner {
    /// Columns of the open block collections, innermost last.
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    max_depth: usize,
    /// Documents begun: by a `---` marker, or by content while none is open.
    documents: usize,
    /// A document is open (begun and not ended by `...`).
    open: bool,
    /// Inside a quoted scalar that continues on the next line: its quote character.
    quote: Option<u8>,
    /// A plain scalar ran to the end of the line and may continue on the next.
    plain: bool,
    /// A block scalar header was read on this line.
    block_scalar: Option<BlockHeader>,
    /// The content indentation of the block scalar being skipped.
    block_indent: Option<usize>,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

impl Scanner {
    fn depth(&self) -> usize {
        self.indents.len() + self.flow
    }

    fn note_depth(&mut self) {
        self.max_depth = self.max_depth.max(self.depth());
    }

    /// Whether `line` belongs to the block scalar being skipped (which then ends when not).
    fn in_block_scalar(&mut self, line: &str) -> bool {
        let Some(indent) = self.block_indent else { return false };
        let spaces = line.bytes().take_while(|&b| b == b' ').count();
        if spaces >= indent || line.bytes().all(is_blank) {
            return true;
        }
        self.block_indent = None;
        false
    }

    /// Starts skipping a block scalar's content, which is indented deeper than its parent:
    /// by the explicit indicator, or as deep as its first non-empty line (libyaml's rules).
    fn start_block_scalar(&mut self, header: BlockHeader, next: Option<&str>) {
        let least = header.parent.map_or(1, |p| p + 1);
        let indent = match header.explicit {
            Some(n) => header.parent.map_or(n, |p| p + n),
            None => {
                let first = next.map_or(0, |l| l.bytes().take_while(|&b| b == b' ').count());
                first.max(least)
            }
        };
        self.block_indent = Some(indent.max(least));
    }

    /// Reads one line that is not block scalar content.
    fn line(&mut self, line: &str) {
        let b = line.as_bytes();
        let mut i = 0;
        if let Some(q) = self.quote {
            match end_of_quoted(b, 0, q) {
                Some(end) => {
                    self.quote = None;
                    i = end;
                }
                None => return,
            }
        }
        let spaces = b.iter().take_while(|&&c| c == b' ').count();
        if self.plain {
            // libyaml continues a plain scalar on a line indented deeper than the enclosing
            // block (any line inside a flow collection) unless it starts a comment or document.
            let rest = b[spaces..].iter().copied().find(|&c| !is_blank(c));
            let least = self.indents.last().map_or(0, |c| c + 1);
            let marker = spaces == 0 && document_marker(b).is_some();
            match rest {
                None => return, // blank lines inside a plain scalar
                Some(b'#') => self.plain = false,
                Some(_) if marker => self.plain = false,
                Some(_) if self.flow > 0 || spaces >= least => {
                    self.plain = false;
                    i = self.plain_scalar(b, spaces);
                }
                Some(_) => self.plain = false,
            }
        }
        if i == 0 {
            if let Some(marker) = document_marker(b) {
                if marker == b'-' {
                    self.documents += 1;
                }
                self.open = marker == b'-';
                self.indents.clear();
                i = 3;
            } else if b.first() == Some(&b'%') {
                return; // a directive
            }
        }
        self.tokens(b, i);
    }

    /// Reads the tokens of a line from `i` on.
    fn tokens(&mut self, b: &[u8], mut i: usize) {
        // Where the token that may turn out to be a mapping key started, on this line.
        let mut key_start: Option<usize> = None;
        while i < b.len() {
            let c = b[i];
            if is_blank(c) {
                i += 1;
                continue;
            }
            if c == b'#' {
                return; // a comment runs to the end of the line
            }
            if !self.open {
                self.open = true;
                self.documents += 1;
            }
            if self.flow == 0 {
                // Before every token, libyaml closes the block collections indented deeper.
                while self.indents.last().is_some_and(|&col| col > i) {
                    self.indents.pop();
                }
            }
            let next_blank = b.get(i + 1).is_none_or(|&n| is_blank(n));
            match c {
                b'[' | b'{' => {
                    key_start.get_or_insert(i);
                    self.flow += 1;
                    self.note_depth();
                    i += 1;
                }
                b']' | b'}' => {
                    self.flow = self.flow.saturating_sub(1);
                    i += 1;
                }
                b',' => i += 1,
                b'-' | b'?' if next_blank && self.flow == 0 => {
                    self.roll(i);
                    key_start = None;
                    i += 1;
                }
                b'?' if next_blank => i += 1,
                b':' if next_blank || (self.flow > 0 && b.get(i + 1).is_some_and(|&n| is_flow_indicator(n))) => {
                    if self.flow == 0
                        && let Some(k) = key_start.take()
                    {
                        self.roll(k);
                    }
                    i += 1;
                }
                b'\'' | b'"' => {
                    key_start.get_or_insert(i);
                    match end_of_quoted(b, i + 1, c) {
                        Some(end) => i = end,
                        None => {
                            self.quote = Some(c);
                            return;
                        }
                    }
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.block_scalar = Some(block_header(&b[i + 1..], self.indents.last().copied()));
                    return;
                }
                // Tags, anchors and aliases: one word, after which a node may still start.
                b'!' | b'&' | b'*' => {
                    while i < b.len() && !is_blank(b[i]) && !(self.flow > 0 && is_flow_indicator(b[i])) {
                        i += 1;
                    }
                }
                _ => {
                    key_start.get_or_insert(i);
                    i = self.plain_scalar(b, i);
                }
            }
        }
    }

    /// A block collection starts at `col` if it is deeper than the current one.
    fn roll(&mut self, col: usize) {
        if self.indents.last().is_none_or(|&top| col > top) {
            self.indents.push(col);
            self.note_depth();
        }
    }

    /// Skips a plain scalar from `i`; returns where the next token may start. Notes when the
    /// scalar runs to the end of the line and may continue.
    fn plain_scalar(&mut self, b: &[u8], mut i: usize) -> usize {
        while i < b.len() {
            let c = b[i];
            let next = b.get(i + 1).copied();
            let ends = match c {
                b':' => next.is_none_or(is_blank) || (self.flow > 0 && next.is_some_and(is_flow_indicator)),
                b'#' => i > 0 && is_blank(b[i - 1]),
                _ => self.flow > 0 && is_flow_indicator(c),
            };
            if ends {
                return i;
            }
            i += 1;
        }
        self.plain = true;
        i
    }
}

/// `---` or `...` at the start of a line, followed by a blank or the end: which one.
fn document_marker(b: &[u8]) -> Option<u8> {
    let head = b.get(..3)?;
    let after_ok = b.get(3).is_none_or(|&c| is_blank(c));
    match head {
        b"---" if after_ok => Some(b'-'),
        b"..." if after_ok => Some(b'.'),
        _ => None,
    }
}

/// Where a quoted scalar whose content starts at `from` ends (just after its closing quote),
/// or `None` when it continues on the next line.
fn end_of_quoted(b: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if quote == b'"' => i += 2,
            b'\'' if quote == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 2,
            c if c == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A block scalar header after its `|` or `>`: chomping and indentation indicators in either
/// order.
fn block_header(rest: &[u8], parent: Option<usize>) -> BlockHeader {
    let explicit = rest.iter().take(2).find(|c| c.is_ascii_digit()).map(|c| usize::from(c - b'0'));
    BlockHeader { explicit, parent }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(text: &str) -> usize {
        let mut scan = Scanner::default();
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            if scan.in_block_scalar(line) {
                continue;
            }
            scan.line(line);
            if let Some(h) = scan.block_scalar.take() {
                scan.start_block_scalar(h, lines.peek().copied());
            }
        }
        scan.max_depth
    }

    fn documents_of(text: &str) -> usize {
        let limits = ManifestLimits { max_documents: 0, ..ManifestLimits::default() };
        let mut n = 0;
        // The count is the smallest limit the text passes.
        while check(text, &ManifestLimits { max_documents: n, ..limits }) == Err(Broken::Documents) {
            n += 1;
        }
        n
    }

    #[test]
    fn block_and_flow_nesting_add_up() {
        assert_eq!(depth_of("a: 1\n"), 1);
        assert_eq!(depth_of("a:\n  b:\n    c: 1\n"), 3);
        assert_eq!(depth_of("a:\n  b: [1, {c: [2]}]\n"), 5);
        assert_eq!(depth_of("- - - x\n"), 3, "compact sequences nest on one line");
        assert_eq!(depth_of(r#"{"a": {"b": [[1]]}}"#), 4, "JSON is flow YAML");
        assert_eq!(depth_of(&"[".repeat(1000)), 1000);
    }

    #[test]
    fn brackets_inside_strings_comments_and_block_scalars_do_not_count() {
        let text = "a: 'x [[[['\nb: \"[[[{{\\\" [[\"\nc: d[[[ e\n# [[[[[[\nf: |\n  {[[[[[[\n   [[[[\n\n  [[\ng: >-\n  {{{{\nh:\n  - [1]\n";
        assert_eq!(depth_of(text), 3, "only h's list counts");
        let multi_line = "a: 'one [[[[\n  two [[[[\n  three'\nb: plain text\n  [[[[ continued\nc: 1\n";
        assert_eq!(depth_of(multi_line), 1, "quoted and plain scalars continue over lines");
        let annotation = "metadata:\n  annotations:\n    last-applied: |\n      {\"a\":{\"b\":{\"c\":{\"d\":[[[[1]]]]}}}}\n  name: x\n";
        assert_eq!(depth_of(annotation), 3);
    }

    #[test]
    fn a_block_scalar_ends_at_a_line_indented_no_deeper_than_its_parent() {
        // libyaml would scan these brackets: they are outside the scalar.
        assert_eq!(depth_of("- a: |\n    text\n  [[[[[[\n"), 8);
        assert_eq!(depth_of("a: |2\n  x\n [[[[\n"), 5, "an explicit indentation indicator");
    }

    #[test]
    fn documents_are_counted_by_their_markers() {
        assert_eq!(documents_of(""), 0);
        assert_eq!(documents_of("a: 1\n"), 1);
        assert_eq!(documents_of("a: 1\n---\nb: 1\n---\nc: 1\n"), 3);
        assert_eq!(documents_of("---\na: 1\n---\nb: 1\n...\n"), 2);
        assert_eq!(documents_of("a: '\n--- inside a string'\n"), 1);
    }

    #[test]
    fn any_text_is_scanned_without_panicking() {
        // Short texts over the characters the scan treats specially, from a fixed seed.
        let alphabet = b"[]{},:-?#'\"|>!&*%.\\ \t\r\nab0129";
        let mut seed: u64 = 0x5eed;
        for _ in 0..200_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let len = (seed >> 58) as usize;
            let text: String = (0..len)
                .map(|k| {
                    let r = seed.rotate_left(7 * k as u32 + 3) ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    char::from(alphabet[(r % alphabet.len() as u64) as usize])
                })
                .collect();
            let _ = check(&text, &ManifestLimits { max_depth: 3, max_documents: 2, ..ManifestLimits::default() });
        }
    }

    #[test]
    fn the_first_broken_limit_is_named_with_its_place() {
        let limits = ManifestLimits { max_depth: 3, max_documents: 2, ..ManifestLimits::default() };
        assert_eq!(check("a: [[1]]\n---\nb: [[[[1]]]]\n", &limits), Err(Broken::Depth { document: 2, line: 3 }));
        assert_eq!(check("a: 1\n---\nb: 1\n---\nc: 1\n", &limits), Err(Broken::Documents));
        assert_eq!(check("a: [[1]]\n---\nb: 1\n", &limits), Ok(()));
    }
}

#[cfg(test)]
mod kubectl {
    use super::*;

    /// One Service and its EndpointSlice as `kubectl get svc,endpointslices -A -o yaml` prints
    /// them inside its `kind: List`, with the server-side fields (`managedFields`, the
    /// last-applied annotation) that make real output deep and long.
    pub(super) fn item(i: usize, endpoints: usize) -> String {
        let mut y = format!(
            r#"- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {{"apiVersion":"v1","kind":"Service","metadata":{{"annotations":{{}},"name":"svc-{i}","namespace":"ns-{i}"}},"spec":{{"ports":[{{"name":"http","port":80,"targetPort":8080}}],"selector":{{"app":"svc-{i}"}}}}}}
    creationTimestamp: "2026-01-01T00:00:00Z"
    labels:
      app: svc-{i}
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {{}}
            f:kubectl.kubernetes.io/last-applied-configuration: {{}}
        f:spec:
          f:internalTrafficPolicy: {{}}
          f:ports:
            .: {{}}
            k:{{"port":80,"protocol":"TCP"}}:
              .: {{}}
              f:name: {{}}
              f:port: {{}}
              f:protocol: {{}}
              f:targetPort: {{}}
          f:selector: {{}}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-01-01T00:00:00Z"
    name: svc-{i}
    namespace: ns-{i}
    resourceVersion: "{i}"
    uid: 6f1c2d3e-0000-4000-8000-{i:012}
  spec:
    clusterIP: 10.96.{a}.{b}
    clusterIPs:
    - 10.96.{a}.{b}
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    selector:
      app: svc-{i}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {{}}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
"#,
            a = i / 250,
            b = i % 250 + 1
        );
        for e in 0..endpoints {
            y.push_str(&format!(
                r#"  - addresses:
    - 10.{x}.{c}.{d}
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-{d}
    targetRef:
      kind: Pod
      name: svc-{i}-7d9f8c6b5-{e:05}
      namespace: ns-{i}
      uid: 0a1b2c3d-0000-4000-8000-{e:012}
    zone: zone-{z}
"#,
                x = 1 + i / 60_000,
                c = (i / 250) % 250,
                d = e % 250 + 1,
                z = e % 3
            ));
        }
        y.push_str(&format!(
            r#"  kind: EndpointSlice
  metadata:
    generateName: svc-{i}-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: svc-{i}
    name: svc-{i}-abcde
    namespace: ns-{i}
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: svc-{i}
      uid: 6f1c2d3e-0000-4000-8000-{i:012}
  ports:
  - name: http
    port: 8080
    protocol: TCP
"#
        ));
        y
    }

    pub(super) fn list(services: usize, endpoints_each: usize) -> String {
        let mut y = String::from("apiVersion: v1\nitems:\n");
        for i in 0..services {
            y.push_str(&item(i, endpoints_each));
        }
        y.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
        y
    }

    #[test]
    fn kubectl_output_is_well_within_the_limits() {
        let text = list(20, 10);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(parsed.get("items").is_some_and(|i| i.as_sequence().is_some_and(|s| s.len() == 40)));
        let mut scan_depth = 0;
        for max_depth in 1.. {
            if check(&text, &ManifestLimits { max_depth, ..ManifestLimits::default() }).is_ok() {
                scan_depth = max_depth;
                break;
            }
        }
        fn depth(v: &serde_yaml::Value) -> usize {
            match v {
                serde_yaml::Value::Mapping(m) => 1 + m.values().map(depth).max().unwrap_or(0),
                serde_yaml::Value::Sequence(s) => 1 + s.iter().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        let real = depth(&parsed);
        assert!(scan_depth <= real, "the scan counts {scan_depth} levels where there are {real}");
        assert!(real * 2 <= ManifestLimits::default().max_depth, "real depth {real} is close to the limit");
    }

    /// The figures the README gives for a large cluster: size, depth, and how long the checks
    /// take. Run by hand: `cargo test -p tpvs-controlplane --lib kubectl -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, run by hand"]
    fn measure_a_large_cluster() {
        let started = std::time::Instant::now();
        let text = list(10_000, 10);
        let built = started.elapsed();
        let started = std::time::Instant::now();
        let checked = check(&text, &ManifestLimits::default());
        let took = started.elapsed();
        let started = std::time::Instant::now();
        let docs = serde_yaml::from_str::<serde_yaml::Value>(&text).map(|_| ());
        let parse = started.elapsed();
        println!(
            "10 000 Services, 100 000 endpoints: {} bytes, built in {built:?}, checked in {took:?} ({checked:?}), parsed in {parse:?} ({docs:?})",
            text.len()
        );
    }
}
