// The code editor: CodeMirror 6 with a small stream language for Handlebars over JSON (and over
// plain text, for console templates), and the render problems shown as lint diagnostics.
import {
  EditorView, keymap, lineNumbers, highlightActiveLineGutter, highlightSpecialChars, drawSelection,
  dropCursor, rectangularSelection, crosshairCursor, highlightActiveLine, Decoration,
} from "@codemirror/view";
import { EditorState, Compartment, StateEffect, StateField, RangeSetBuilder } from "@codemirror/state";
import { StreamLanguage, HighlightStyle, syntaxHighlighting, bracketMatching } from "@codemirror/language";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { searchKeymap, highlightSelectionMatches } from "@codemirror/search";
import { lintGutter, lintKeymap, setDiagnostics } from "@codemirror/lint";

// CodeMirror's basicSetup, less what changes typed text: no bracket closing, no autocompletion
// (what is typed, by a person or a WebDriver test, is exactly what the template holds).
const setup = [
  lineNumbers(),
  highlightActiveLineGutter(),
  highlightSpecialChars(),
  history(),
  drawSelection(),
  dropCursor(),
  EditorState.allowMultipleSelections.of(true),
  bracketMatching(),
  rectangularSelection(),
  crosshairCursor(),
  highlightActiveLine(),
  highlightSelectionMatches(),
  keymap.of([...defaultKeymap, ...searchKeymap, ...historyKeymap, ...lintKeymap, indentWithTab]),
];
import { tags as t } from "@lezer/highlight";

const KEYWORDS = new Set(["else", "this", "true", "false", "null", "undefined", "as"]);

/** A tokenizer for Handlebars mustaches laid over JSON (`json`) or over free text. */
function handlebarsOver(json) {
  return StreamLanguage.define({
    name: json ? "handlebars-json" : "handlebars-text",
    startState: () => ({ hbs: null, first: false, inString: false, key: false }),
    token(stream, s) {
      // Inside a Handlebars comment.
      if (s.hbs === "comment" || s.hbs === "longComment") {
        const end = s.hbs === "longComment" ? "--}}" : "}}";
        const at = stream.string.indexOf(end, stream.pos);
        if (at < 0) stream.skipToEnd();
        else {
          stream.pos = at + end.length;
          s.hbs = null;
        }
        return "comment";
      }
      // Inside a mustache.
      if (s.hbs === "expr") {
        if (stream.match(/^~?\}\}\}?/)) {
          s.hbs = null;
          return "meta";
        }
        if (stream.eatSpace()) return null;
        if (stream.match(/^"(?:[^"\\]|\\.)*"?/) || stream.match(/^'(?:[^'\\]|\\.)*'?/)) return "string.special";
        if (stream.match(/^[()]/)) return "paren";
        if (stream.match(/^-?\d+(?:\.\d+)?/)) return "number";
        if (stream.match(/^[=|]/)) return "operator";
        if (stream.match(/^@[\w.]+/)) return "atom";
        const word = stream.match(/^[^\s(){}"'=|~]+/);
        if (word) {
          const w = word[0];
          const first = s.first;
          s.first = false;
          if (KEYWORDS.has(w)) return "keyword";
          if (stream.peek() === "=") return "attributeName";
          return first ? "keyword" : "variableName";
        }
        stream.next();
        return null;
      }
      // Opening a comment or a mustache.
      if (stream.match("{{!--")) {
        s.hbs = "longComment";
        return "comment";
      }
      if (stream.match(/^\{\{~?!/)) {
        s.hbs = "comment";
        return "comment";
      }
      if (stream.match(/^\{\{\{?~?(?:#>|[#/^>&*]|else\b)?/)) {
        s.hbs = "expr";
        s.first = true;
        return "meta";
      }
      if (!json) {
        // Free text up to the next mustache.
        const at = stream.string.indexOf("{{", stream.pos);
        if (at < 0) stream.skipToEnd();
        else if (at === stream.pos) stream.next();
        else stream.pos = at;
        return null;
      }
      // JSON.
      if (s.inString) {
        while (!stream.eol()) {
          if (stream.string.startsWith("{{", stream.pos)) break;
          const ch = stream.next();
          if (ch === "\\") stream.next();
          else if (ch === '"') {
            s.inString = false;
            break;
          }
        }
        return s.key ? "propertyName" : "string";
      }
      if (stream.peek() === '"') {
        s.key = !!stream.match(/^"(?:[^"\\{]|\\.)*"\s*:/, false);
        stream.next();
        s.inString = true;
        return s.key ? "propertyName" : "string";
      }
      if (stream.eatSpace()) return null;
      if (stream.match(/^-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/)) return "number";
      if (stream.match(/^(?:true|false|null)\b/)) return "atom";
      if (stream.match(/^[{}]/)) return "brace";
      if (stream.match(/^[[\]]/)) return "squareBracket";
      if (stream.match(/^[:,]/)) return "punctuation";
      stream.next();
      return null;
    },
    languageData: { commentTokens: { block: { open: "{{!--", close: "--}}" } } },
  });
}

const jsonLang = handlebarsOver(true);
const textLang = handlebarsOver(false);

const highlight = HighlightStyle.define([
  { tag: t.meta, color: "#b5179e", fontWeight: "600" },
  { tag: t.keyword, color: "#7209b7", fontWeight: "600" },
  { tag: t.variableName, color: "#0b6e99" },
  { tag: t.attributeName, color: "#c2410c" },
  { tag: t.atom, color: "#b45309" },
  { tag: t.special(t.string), color: "#15803d", fontStyle: "italic" },
  { tag: t.string, color: "#166534" },
  { tag: t.propertyName, color: "#1e3a8a", fontWeight: "500" },
  { tag: t.number, color: "#9a3412" },
  { tag: t.comment, color: "#6b7280", fontStyle: "italic" },
  { tag: t.paren, color: "#b5179e" },
  { tag: [t.brace, t.squareBracket, t.punctuation], color: "#475569" },
  { tag: t.operator, color: "#b5179e" },
]);

// The lines that have a problem get a tinted background (besides the lint gutter's marker).
const setProblemLines = StateEffect.define();
const problemLine = Decoration.line({ class: "cm-problem-line" });
const problemLines = StateField.define({
  create: () => Decoration.none,
  update(deco, tr) {
    deco = deco.map(tr.changes);
    for (const e of tr.effects) {
      if (e.is(setProblemLines)) {
        const b = new RangeSetBuilder();
        for (const from of e.value) b.add(from, from, problemLine);
        deco = b.finish();
      }
    }
    return deco;
  },
  provide: (f) => EditorView.decorations.from(f),
});

const theme = EditorView.theme({
  "&": { height: "100%", fontSize: "13px" },
  ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.5" },
  ".cm-problem-line": { backgroundColor: "rgba(220, 38, 38, 0.07)" },
});

/**
 * Makes the editor inside `parent`. `onChange(text)` is called on every edit.
 * Returns helpers to set the text, switch language and show problems.
 */
export function createEditor(parent, onChange) {
  const language = new Compartment();
  let silent = false;
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: "",
      extensions: [
        setup,
        language.of(jsonLang),
        syntaxHighlighting(highlight),
        lintGutter(),
        problemLines,
        theme,
        EditorView.lineWrapping,
        EditorView.updateListener.of((u) => {
          if (u.docChanged && !silent) onChange(u.state.doc.toString());
        }),
      ],
    }),
  });

  return {
    view,
    getText: () => view.state.doc.toString(),
    /** Replaces the whole text (`notify`: treat it as an edit). */
    setText(text, { notify = false, kind } = {}) {
      silent = !notify;
      try {
        const effects = kind ? language.reconfigure(kind === "console" ? textLang : jsonLang) : [];
        view.dispatch({
          changes: { from: 0, to: view.state.doc.length, insert: text },
          selection: { anchor: 0 },
          effects,
          scrollIntoView: true,
        });
      } finally {
        silent = false;
      }
    },
    /** Shows problems that have a line as diagnostics (gutter marker, underline, tooltip). */
    showProblems(problems) {
      const doc = view.state.doc;
      const diagnostics = [];
      for (const p of problems) {
        if (!p.line || p.line < 1) continue;
        const line = doc.line(Math.min(p.line, doc.lines));
        const from = p.column ? Math.min(line.from + p.column - 1, line.to) : line.from;
        const to = from < line.to ? line.to : Math.min(from + 1, doc.length);
        diagnostics.push({
          from,
          to,
          severity: p.source === "limit" || p.source === "shape" ? "warning" : "error",
          source: p.source,
          message: p.message,
        });
      }
      const lines = [...new Set(diagnostics.map((d) => doc.lineAt(d.from).from))].sort((a, b) => a - b);
      const spec = setDiagnostics(view.state, diagnostics);
      view.dispatch({ ...spec, effects: [...[spec.effects ?? []].flat(), setProblemLines.of(lines)] });
    },
    /** Puts the cursor at a 1-based line (and column) and scrolls it into view. */
    goTo(lineNo, column) {
      const doc = view.state.doc;
      const line = doc.line(Math.max(1, Math.min(lineNo, doc.lines)));
      const pos = column ? Math.min(line.from + column - 1, line.to) : line.from;
      view.dispatch({ selection: { anchor: pos }, effects: EditorView.scrollIntoView(pos, { y: "center" }) });
      view.focus();
    },
  };
}
