//! The lexer against the shell constructs it knows.

use super::*;

/// Every command of `src` as (words, writes).
fn commands(src: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    lex(src, &mut |c| {
        out.push((
            c.words().map(String::from).collect(),
            c.writes().map(String::from).collect(),
        ));
        ControlFlow::Continue(())
    });
    out
}

fn words(src: &str) -> Vec<Vec<String>> {
    commands(src).into_iter().map(|(w, _)| w).collect()
}

#[test]
fn quotes_escapes_and_continuations_are_removed() {
    assert_eq!(
        words(r#"\rm "-rf" r''m a\ b"#),
        [["rm", "-rf", "rm", "a b"]]
    );
    assert_eq!(words("rm -rf \\\n /"), [["rm", "-rf", "/"]]);
    assert_eq!(words("r\\\nm x"), [["rm", "x"]]);
    assert_eq!(
        words(r#"echo "a \"b\" \$c \x""#),
        [["echo", r#"a "b" $c \x"#]]
    );
    assert_eq!(
        words("echo 'two\nlines' next"),
        [["echo", "two\nlines", "next"]]
    );
    assert_eq!(words(r"$'\x72\155' x"), [["rm", "x"]]);
    assert_eq!(words(r"$'\u0072\'m' x"), [["r'm", "x"]]);
    assert_eq!(words("echo '' \"\""), [["echo", "", ""]]);
}

#[test]
fn operators_and_newlines_separate_commands() {
    let got = words("a; b && c || d | e & f\ng (h) { i; }");
    let want: Vec<Vec<&str>> = vec![
        vec!["a"],
        vec!["b"],
        vec!["c"],
        vec!["d"],
        vec!["e"],
        vec!["f"],
        vec!["g"],
        vec!["h"],
        vec!["{", "i"],
        vec!["}"],
    ];
    assert_eq!(got, want);
}

#[test]
fn comments_and_heredoc_bodies_are_skipped() {
    assert_eq!(words("a # rm -rf /\nb#c"), [vec!["a"], vec!["b#c"]]);
    let src = "cat <<'EOF' > /tmp/x\ndon't rm -rf /\nEOF\nnext\ncat <<-END\n\tbody\n\tEND\nlast";
    assert_eq!(
        words(src),
        [vec!["cat"], vec!["next"], vec!["cat"], vec!["last"]]
    );
    assert_eq!(commands(src)[0].1, ["/tmp/x"]);
}

#[test]
fn multiline_strings_and_heredoc_bodies_are_noted() {
    let noted = |src: &str| {
        let lexed = lex(src, &mut |_| ControlFlow::Continue(()));
        lexed
            .multiline
            .iter()
            .map(|&(a, b)| src[a..b].to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(noted("echo 'a\nb' \"c\" 'd'"), ["'a\nb'"]);
    assert_eq!(noted("x=\"1\n2\"; y"), ["\"1\n2\""]);
    assert_eq!(noted("cat <<E\nbody\nE\nz"), ["body\nE\n"]);
    assert!(noted("echo 'one line' \"too\"").is_empty());
}

#[test]
fn redirections_keep_output_targets_only() {
    let got = commands(r#"echo x >"/etc/passwd" 2>&1 >>a >|b &>c <in <>rw >&f 2>/dev/null"#);
    assert_eq!(got[0].0, ["echo", "x"]);
    assert_eq!(
        got[0].1,
        ["/etc/passwd", "a", "b", "c", "rw", "f", "/dev/null"]
    );
    assert_eq!(commands("cat /dev/zero>/dev/sdz")[0].1, ["/dev/sdz"]);
    assert_eq!(commands("echo 2 > x")[0].0, ["echo", "2"]);
}

#[test]
fn substitutions_are_commands_of_their_own() {
    let got = words("echo $(rm -rf /) \"`reboot`\" x$(a $(b))y <(c)");
    let want: Vec<Vec<&str>> = vec![
        vec!["rm", "-rf", "/"],
        vec!["reboot"],
        vec!["b"],
        vec!["a", "$()"],
        vec!["c"],
        vec!["echo", "$()", "$()", "x$()y"],
    ];
    assert_eq!(got, want);
    assert_eq!(
        words("echo ${a:-b c} $((1+2))"),
        [vec!["1+2"], vec!["echo", "${a:-b c}", "$()"]]
    );
}

#[test]
fn unterminated_constructs_end_at_the_end() {
    assert_eq!(words("echo 'open"), [["echo", "open"]]);
    assert_eq!(
        words("echo \"open $(rm"),
        [vec!["rm"], vec!["echo", "open $()"]]
    );
    assert_eq!(words("x\\"), [["x"]]);
    assert_eq!(words("echo $'a\\"), [["echo", "a"]]);
    // Nesting beyond the bound is text, and costs no stack.
    let deep = format!("{}rm -rf /{}", "$(".repeat(10_000), ")".repeat(10_000));
    assert!(!words(&deep).is_empty());
}
