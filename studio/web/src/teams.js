// A Teams message: its Adaptive Card drawn by Microsoft's own renderer (`adaptivecards` v3) with
// the Microsoft Teams host config, the renderer's parse warnings, and the card checked against the
// Adaptive Card 1.4 JSON schema (precompiled by build.mjs from tests/schemas/adaptive-card-1.4.json).
import * as AC from "adaptivecards";
import MarkdownIt from "markdown-it";
import * as validators from "./gen/validate-card.js";

// The Microsoft Teams (light theme) host config. Every value comes from Microsoft's published
// `samples/HostConfig/microsoft-teams-light.json` in the microsoft/AdaptiveCards repository (the
// host config the Adaptive Cards Designer uses for its "Microsoft Teams - Light" target); only
// the foreground colour table, identical for every container style there, is written once here.
const foregroundColors = {
  default: { default: "#ff252424", subtle: "#bf252424" },
  dark: { default: "#252424", subtle: "#bf252424" },
  light: { default: "#ffffff", subtle: "#fff3f2f1" },
  accent: { default: "#6264a7", subtle: "#8b8cc7" },
  good: { default: "#92c353", subtle: "#e592c353" },
  warning: { default: "#f8d22a", subtle: "#e5f8d22a" },
  attention: { default: "#c4314b", subtle: "#e5c4314b" },
};
const fontSizes = { small: 12, default: 14, medium: 14, large: 18, extraLarge: 24 };
const fontWeights = { lighter: 200, default: 400, bolder: 600 };
export const TEAMS_HOST_CONFIG = {
  choiceSetInputValueSeparator: ",",
  supportsInteractivity: true,
  spacing: { small: 8, default: 12, medium: 16, large: 20, extraLarge: 24, padding: 16 },
  separator: { lineThickness: 1, lineColor: "#EEEEEE" },
  imageSizes: { small: 32, medium: 52, large: 100 },
  fontStyles: {
    default: { fontFamily: "'Segoe UI', Tahoma, Geneva, Verdana, sans-serif", fontSizes, fontWeights },
    monospace: { fontFamily: "'Courier New', Courier, monospace", fontSizes, fontWeights },
  },
  containerStyles: {
    default: { foregroundColors, backgroundColor: "#ffffff" },
    emphasis: { foregroundColors, backgroundColor: "#fff9f8f7" },
    accent: { foregroundColors, backgroundColor: "#C7DEF9" },
    good: { foregroundColors, backgroundColor: "#CCFFCC" },
    attention: { foregroundColors, backgroundColor: "#FFC5B2" },
    warning: { foregroundColors, backgroundColor: "#FFE2B2" },
  },
  actions: {
    maxActions: 6,
    spacing: "Default",
    buttonSpacing: 8,
    showCard: { actionMode: "Inline", inlineTopMargin: 16, style: "emphasis" },
    preExpandSingleShowCardAction: false,
    actionsOrientation: "Horizontal",
    actionAlignment: "Left",
  },
  adaptiveCard: { allowCustomStyle: false },
  imageSet: { imageSize: "Medium", maxImageHeight: 100 },
  factSet: {
    title: { size: "Default", color: "Default", isSubtle: false, weight: "Bolder", wrap: true },
    value: { size: "Default", color: "Default", isSubtle: false, weight: "Default", wrap: true },
    spacing: 16,
  },
};

const hostConfig = new AC.HostConfig(TEAMS_HOST_CONFIG);

// Teams renders a Markdown subset in TextBlocks; markdown-it (no raw HTML) stands in for it.
const md = new MarkdownIt({ html: false, linkify: false, breaks: false });
AC.AdaptiveCard.onProcessMarkdown = (text, result) => {
  result.outputHtml = md.render(text);
  result.didProcess = true;
};

/** The card a Teams message body carries, or a reason it carries none. */
export function cardOf(body) {
  const att = body?.attachments?.[0];
  if (!att) return { error: "the body has no attachments[0]" };
  if (att.content == null || typeof att.content !== "object") return { error: "attachments[0] has no card `content`" };
  return { card: att.content };
}

/**
 * Draws the card into `host`. Returns the renderer's warnings (strings).
 */
export function drawCard(host, content) {
  const warnings = [];
  host.replaceChildren();
  const card = new AC.AdaptiveCard();
  card.hostConfig = hostConfig;
  card.onExecuteAction = (action) => {
    if (action instanceof AC.OpenUrlAction && action.url) window.open(action.url, "_blank", "noopener,noreferrer");
  };
  const context = new AC.SerializationContext();
  try {
    card.parse(content, context);
  } catch (e) {
    warnings.push(`the card could not be parsed: ${e.message ?? e}`);
    return warnings;
  }
  for (let i = 0; i < context.eventCount; i++) {
    const ev = context.getEventAt(i);
    warnings.push(ev.message);
  }
  try {
    const results = card.validateProperties();
    for (let i = 0; i < results.failures.length; i++) {
      const failure = results.failures[i];
      for (const error of failure.errors) warnings.push(error.message);
    }
  } catch (e) {
    /* validation is a bonus */
  }
  let element;
  try {
    element = card.render();
  } catch (e) {
    warnings.push(`the card could not be drawn: ${e.message ?? e}`);
  }
  if (element) host.appendChild(element);
  else if (!warnings.length) warnings.push("the renderer drew nothing");
  return [...new Set(warnings)];
}

/**
 * Checks a card (its `msteams` key removed) against the Adaptive Card 1.4 schema. Returns
 * readable violations.
 *
 * The schema lets an element be any of the element types (an `anyOf`), so a wrong element fails
 * every branch and the raw errors say what each other type would want. So when the card fails,
 * each typed object in it (the card, every element and action) is checked again against its own
 * type's definition, keeping only the errors that are its own (not those inside a typed child,
 * which is checked in its turn); an object whose type the schema does not know is said so.
 */
export function schemaProblems(content) {
  const card = { ...content };
  delete card.msteams;
  if (validators.card(card)) return [];
  const out = [];
  const seen = new Set();
  const add = (pointer, msg) => {
    const text = `${pointer ? pointerToPath(pointer) : "the card"} ${msg}`;
    if (!seen.has(text)) {
      seen.add(text);
      out.push(text);
    }
  };
  walk(card, "", (obj, pointer) => {
    const name = validators.typed[obj.type];
    if (!name) {
      add(pointer, `has type ${JSON.stringify(obj.type)}, which Adaptive Card 1.4 does not know`);
      return;
    }
    const check = validators[name];
    if (check(obj)) return;
    for (const e of readable(obj, check.errors ?? [])) {
      if (typedOwnerPath(obj, e.instancePath) !== "") continue; // a typed child's own business
      add(pointer + e.instancePath, e.msg);
    }
  });
  if (!out.length) {
    // Every object is right by itself, so one is in the wrong place (an action among elements…).
    for (const e of readable(card, validators.card.errors ?? [])) add(e.instancePath, e.msg);
  }
  return out.slice(0, 50);
}

/** Calls `visit(obj, pointer)` for every object with a string `type`, the root included. */
function walk(value, pointer, visit) {
  if (Array.isArray(value)) value.forEach((v, i) => walk(v, `${pointer}/${i}`, visit));
  else if (value && typeof value === "object") {
    if (typeof value.type === "string") visit(value, pointer);
    for (const [k, v] of Object.entries(value)) walk(v, `${pointer}/${k.replace(/~/g, "~0").replace(/\//g, "~1")}`, visit);
  }
}

/** Ajv errors, the most specific ones, with a message. */
function readable(root, errors) {
  const specific = errors.filter((e) => {
    if (e.keyword === "anyOf" || e.keyword === "allOf" || e.keyword === "oneOf") {
      return !errors.some((o) => o !== e && !["anyOf", "allOf", "oneOf"].includes(o.keyword) && o.instancePath.startsWith(e.instancePath));
    }
    // An `enum` or a case-insensitive `pattern` for one value: the enum says it.
    if (e.keyword === "pattern") return !errors.some((o) => o.keyword === "enum" && o.instancePath === e.instancePath);
    return true;
  });
  return specific.map((e) => {
    const value = at(root, e.instancePath);
    let msg;
    if (e.keyword === "additionalProperties") msg = `has no property "${e.params.additionalProperty}" in Adaptive Card 1.4`;
    else if (e.keyword === "required") msg = `must have the property "${e.params.missingProperty}"`;
    else if (e.keyword === "enum")
      msg = `must be one of ${e.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")} (not ${JSON.stringify(value)})`;
    else if (e.keyword === "anyOf" && value && typeof value === "object" && typeof value.type === "string")
      msg = `has type "${value.type}", which Adaptive Card 1.4 does not allow here`;
    else if (e.keyword === "anyOf") msg = `is not an allowed value here (${JSON.stringify(value)?.slice(0, 60)})`;
    else msg = e.message;
    return { instancePath: e.instancePath, msg };
  });
}

/** The pointer (relative to `root`) of the nearest typed object strictly inside `root` that holds `pointer`, or "". */
function typedOwnerPath(root, pointer) {
  const parts = pointer.split("/").slice(1);
  for (let n = parts.length; n >= 1; n--) {
    const p = "/" + parts.slice(0, n).join("/");
    const v = at(root, p);
    if (v && typeof v === "object" && !Array.isArray(v) && typeof v.type === "string") {
      // An error about the child's own `type` value, or the child itself, sits at its path.
      return p;
    }
  }
  return "";
}

/** The value at a JSON pointer. */
function at(root, pointer) {
  let v = root;
  for (const p of pointer.split("/").slice(1)) {
    if (v == null) return undefined;
    v = v[p.replace(/~1/g, "/").replace(/~0/g, "~")];
  }
  return v;
}

/** `/body/2/items/0/size` → `body[2].items[0].size` */
function pointerToPath(pointer) {
  return pointer
    .split("/")
    .slice(1)
    .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"))
    .reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), "");
}
