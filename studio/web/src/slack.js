// A Slack message drawn as the Slack client would show it: Block Kit blocks, the `text`
// fallback, legacy attachments with their colour bar, and Slack's mrkdwn.
// Everything user-supplied goes through esc() or textContent: the body is never trusted HTML.

const ENTITIES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'" };
const decode = (s) => s.replace(/&(?:amp|lt|gt|quot|#39);/g, (m) => ENTITIES[m]);
export const esc = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// The emoji shortcodes kitebridge's own templates and Buildkite messages tend to use.
const EMOJI = {
  white_check_mark: "✅", heavy_check_mark: "✔️", x: "❌", warning: "⚠️", rotating_light: "🚨",
  fire: "🔥", tada: "🎉", rocket: "🚀", hourglass: "⌛", hourglass_flowing_sand: "⏳",
  stopwatch: "⏱️", no_entry: "⛔", no_entry_sign: "🚫", construction: "🚧", bell: "🔔",
  eyes: "👀", thumbsup: "👍", "+1": "👍", thumbsdown: "👎", "-1": "👎", pause_button: "⏸️",
  double_vertical_bar: "⏸️", arrows_counterclockwise: "🔄", repeat: "🔁", skull: "💀",
  large_green_circle: "🟢", red_circle: "🔴", large_yellow_circle: "🟡", white_circle: "⚪",
  robot_face: "🤖", computer: "💻", lock: "🔒", key: "🔑", link: "🔗", twisted_rightwards_arrows: "🔀",
  information_source: "ℹ️", mag: "🔍", package: "📦", memo: "📝", bulb: "💡", zap: "⚡",
  heavy_minus_sign: "➖", grey_question: "❔", question: "❓", exclamation: "❗", boom: "💥",
  stop_sign: "🛑", octagonal_sign: "🛑", busts_in_silhouette: "👥", bust_in_silhouette: "👤",
};
const emoji = (html) =>
  html.replace(/:([a-z0-9_+-]+):/g, (m, name) => (EMOJI[name] ? `<span class="emoji" title=":${name}:">${EMOJI[name]}</span>` : m));

const safeUrl = (u) => (/^(https?:|mailto:|slack:)/i.test(u) ? u : "#");

/** One `<…>` token: a link, a mention or a special. */
function angle(inner) {
  const [target, label] = splitOnce(inner, "|");
  const shown = (fallback) => esc(decode(label ?? fallback).replace(/^[@#]/, ""));
  if (target.startsWith("@")) return `<span class="mention">@${shown(target.slice(1))}</span>`;
  if (target.startsWith("#")) return `<span class="mention">#${shown(target.slice(1))}</span>`;
  if (target.startsWith("!subteam^")) return `<span class="mention">@${shown(target.slice(9))}</span>`;
  if (target.startsWith("!date^")) {
    const secs = Number(target.split("^")[1]);
    const when = Number.isFinite(secs) ? new Date(secs * 1000).toLocaleString() : null;
    return `<span class="date">${esc(decode(label ?? when ?? target))}</span>`;
  }
  if (target.startsWith("!")) {
    const word = target.slice(1);
    return `<span class="mention special">@${esc(decode(label ?? word))}</span>`;
  }
  const url = decode(target);
  // Not a link Slack knows (no scheme): shown as it was written.
  if (!/^[a-z][a-z0-9+.-]*:/i.test(url)) return esc(`<${decode(inner)}>`);
  return `<a href="${esc(safeUrl(url))}" target="_blank" rel="noopener noreferrer">${esc(decode(label ?? url))}</a>`;
}

function splitOnce(s, sep) {
  const i = s.indexOf(sep);
  return i < 0 ? [s] : [s.slice(0, i), s.slice(i + 1)];
}

// Placeholders for pieces that must not be formatted further (private-use characters).
const P0 = "\uE000";
const P1 = "\uE001";

/** Slack mrkdwn → HTML. */
export function mrkdwn(text) {
  if (text == null) return "";
  const held = [];
  const hold = (html) => `${P0}${held.push(html) - 1}${P1}`;
  let s = String(text).replace(/[\uE000\uE001]/g, "");
  // ```preformatted``` (entities decoded, links kept, nothing else formatted)
  s = s.replace(/```\n?([\s\S]*?)```/g, (m, body) => hold(`<pre class="pre">${inline(body, false, hold)}</pre>`));
  // `code`
  s = s.replace(/`([^`\n]+)`/g, (m, body) => hold(`<code>${esc(decode(body))}</code>`));
  s = emoji(inline(s, true, hold));
  // Put the held pieces back (a held <pre> may hold links itself).
  for (let round = 0; round < 3 && s.includes(P0); round++) {
    s = s.replace(/\uE000(\d+)\uE001/g, (m, i) => held[Number(i)] ?? "");
  }
  return s;
}

function inline(s, format, hold) {
  // <links>, <@mentions>, <!here>…
  s = s.replace(/<([^<>\n]+)>/g, (m, inner) => hold(angle(inner)));
  // What is left is text: decode Slack's entities, then escape for HTML.
  s = esc(decode(s));
  if (format) {
    const edge = "(^|[\\s(\\[{\"'\\uE001>“‘-])";
    const after = "(?=$|[\\s).,!?:;\\]}\"'\\uE000<”’-])";
    const span = (mark, tag) => {
      const m = mark.replace(/[*~]/g, "\\$&");
      const re = new RegExp(`${edge}${m}(?![\\s${m}])([^\\n]*?[^\\s])${m}${after}`, "g");
      s = s.replace(re, (all, pre, body) => `${pre}<${tag}>${body}</${tag}>`);
    };
    span("*", "b");
    span("_", "i");
    span("~", "s");
    // > quoted lines
    s = s.replace(/(^|\n)&gt; ?([^\n]*)/g, (m, pre, body) => `${pre}<span class="quote">${body}</span>`);
  }
  return s.replace(/\n/g, "<br>");
}

const plain = (obj) => (obj ? emoji(esc(obj.text ?? "")).replace(/\n/g, "<br>") : "");
/** A text object (plain_text or mrkdwn). */
const textObj = (obj) => (!obj ? "" : obj.type === "mrkdwn" ? mrkdwn(obj.text) : plain(obj));

function image(url, alt, cls) {
  if (!url) return `<span class="${cls} img-missing" title="${esc(alt ?? "")}">🖼</span>`;
  return `<img class="${cls}" src="${esc(safeUrl(url))}" alt="${esc(alt ?? "")}" loading="lazy" referrerpolicy="no-referrer">`;
}

function element(el) {
  if (!el || typeof el !== "object") return "";
  switch (el.type) {
    case "button": {
      const style = el.style === "primary" ? " primary" : el.style === "danger" ? " danger" : "";
      const label = plain(el.text);
      return el.url
        ? `<a class="sl-button${style}" href="${esc(safeUrl(el.url))}" target="_blank" rel="noopener noreferrer">${label}</a>`
        : `<button type="button" class="sl-button${style}">${label}</button>`;
    }
    case "image":
      return image(el.image_url, el.alt_text, "sl-thumb");
    case "overflow":
      return `<button type="button" class="sl-button overflow" title="overflow menu">⋯</button>`;
    case "static_select":
    case "external_select":
    case "users_select":
    case "conversations_select":
    case "channels_select":
    case "multi_static_select":
      return `<span class="sl-select">${plain(el.placeholder) || "Select…"} ▾</span>`;
    case "datepicker":
      return `<span class="sl-select">📅 ${esc(el.initial_date ?? "Pick a date")}</span>`;
    default:
      return `<span class="sl-unknown">${esc(el.type ?? "element")}</span>`;
  }
}

function richText(el) {
  const out = [];
  for (const part of el.elements ?? []) {
    const inner = (part.elements ?? [])
      .map((x) => {
        if (x.type === "text") {
          let h = esc(x.text ?? "").replace(/\n/g, "<br>");
          if (x.style?.code) h = `<code>${h}</code>`;
          if (x.style?.bold) h = `<b>${h}</b>`;
          if (x.style?.italic) h = `<i>${h}</i>`;
          if (x.style?.strike) h = `<s>${h}</s>`;
          return h;
        }
        if (x.type === "link") return `<a href="${esc(safeUrl(x.url ?? ""))}">${esc(x.text ?? x.url ?? "")}</a>`;
        if (x.type === "user") return `<span class="mention">@${esc(x.user_id)}</span>`;
        if (x.type === "channel") return `<span class="mention">#${esc(x.channel_id)}</span>`;
        if (x.type === "broadcast") return `<span class="mention special">@${esc(x.range)}</span>`;
        if (x.type === "emoji") return EMOJI[x.name] ?? `:${esc(x.name)}:`;
        return "";
      })
      .join("");
    if (part.type === "rich_text_preformatted") out.push(`<pre class="pre">${inner}</pre>`);
    else if (part.type === "rich_text_quote") out.push(`<div class="quote">${inner}</div>`);
    else if (part.type === "rich_text_list")
      out.push(`<ul>${(part.elements ?? []).map((x) => `<li>${richText({ elements: [x] })}</li>`).join("")}</ul>`);
    else out.push(`<div>${inner}</div>`);
  }
  return out.join("");
}

function block(b) {
  if (!b || typeof b !== "object") return "";
  switch (b.type) {
    case "header":
      return `<div class="sl-block sl-header">${plain(b.text)}</div>`;
    case "section": {
      const fields = (b.fields ?? []).map((f) => `<div class="sl-field">${textObj(f)}</div>`).join("");
      const body =
        (b.text ? `<div class="sl-text">${textObj(b.text)}</div>` : "") +
        (fields ? `<div class="sl-fields">${fields}</div>` : "");
      const acc = b.accessory ? `<div class="sl-accessory">${element(b.accessory)}</div>` : "";
      return `<div class="sl-block sl-section"><div class="sl-section-main">${body}</div>${acc}</div>`;
    }
    case "context":
      return `<div class="sl-block sl-context">${(b.elements ?? [])
        .map((e) => (e.type === "image" ? image(e.image_url, e.alt_text, "sl-ctx-img") : `<span>${textObj(e)}</span>`))
        .join("")}</div>`;
    case "divider":
      return `<hr class="sl-block sl-divider">`;
    case "actions":
      return `<div class="sl-block sl-actions">${(b.elements ?? []).map(element).join("")}</div>`;
    case "image":
      return `<div class="sl-block sl-image">${b.title ? `<div class="sl-image-title">${plain(b.title)}</div>` : ""}${image(
        b.image_url ?? b.slack_file?.url,
        b.alt_text,
        "sl-img",
      )}</div>`;
    case "rich_text":
      return `<div class="sl-block sl-rich">${richText(b)}</div>`;
    case "markdown":
      return `<div class="sl-block sl-text">${esc(b.text ?? "").replace(/\n/g, "<br>")}</div>`;
    default:
      return `<div class="sl-block sl-unknown">unsupported block: ${esc(b.type ?? "?")}</div>`;
  }
}

function attachment(a) {
  const color = typeof a.color === "string" ? a.color : "";
  const named = { good: "#2eb886", warning: "#daa038", danger: "#a30200" };
  const bar = named[color] ?? (/^#?[0-9a-f]{3,8}$/i.test(color) ? (color.startsWith("#") ? color : `#${color}`) : "#dddddd");
  const parts = [];
  const md = (field) => (a.mrkdwn_in ?? ["text", "pretext", "fields"]).includes(field);
  if (a.author_name)
    parts.push(
      `<div class="sl-att-author">${a.author_icon ? image(a.author_icon, "", "sl-ctx-img") : ""}${
        a.author_link ? `<a href="${esc(safeUrl(a.author_link))}">${esc(a.author_name)}</a>` : esc(a.author_name)
      }</div>`,
    );
  if (a.title)
    parts.push(
      `<div class="sl-att-title">${
        a.title_link ? `<a href="${esc(safeUrl(a.title_link))}" target="_blank" rel="noopener noreferrer">${esc(a.title)}</a>` : esc(a.title)
      }</div>`,
    );
  if (a.text) parts.push(`<div class="sl-text">${md("text") ? mrkdwn(a.text) : plain({ text: a.text })}</div>`);
  if (Array.isArray(a.fields) && a.fields.length)
    parts.push(
      `<div class="sl-att-fields">${a.fields
        .map(
          (f) =>
            `<div class="sl-att-field${f.short ? " short" : ""}"><div class="sl-att-field-title">${esc(f.title ?? "")}</div><div>${
              md("fields") ? mrkdwn(f.value ?? "") : esc(f.value ?? "")
            }</div></div>`,
        )
        .join("")}</div>`,
    );
  if (Array.isArray(a.blocks)) parts.push(a.blocks.map(block).join(""));
  if (a.image_url) parts.push(`<div class="sl-image">${image(a.image_url, "", "sl-img")}</div>`);
  if (Array.isArray(a.actions) && a.actions.length)
    parts.push(
      `<div class="sl-actions">${a.actions
        .map((x) => element({ type: "button", text: { text: x.text }, url: x.url, style: x.style }))
        .join("")}</div>`,
    );
  if (a.footer || a.ts)
    parts.push(
      `<div class="sl-context sl-att-footer">${a.footer_icon ? image(a.footer_icon, "", "sl-ctx-img") : ""}<span>${mrkdwn(
        a.footer ?? "",
      )}${a.ts ? ` | ${esc(new Date(Number(a.ts) * 1000).toLocaleString())}` : ""}</span></div>`,
    );
  const thumb = a.thumb_url ? image(a.thumb_url, "", "sl-thumb") : "";
  const pretext = a.pretext ? `<div class="sl-text sl-pretext">${md("pretext") ? mrkdwn(a.pretext) : esc(a.pretext)}</div>` : "";
  return `${pretext}<div class="sl-attachment"><div class="sl-bar" style="background:${esc(bar)}"></div><div class="sl-att-body">${parts.join(
    "",
  )}</div>${thumb}</div>`;
}

/** The whole message as HTML. */
export function slackMessage(body) {
  if (!body || typeof body !== "object") return `<p class="muted">Nothing to draw.</p>`;
  const blocks = Array.isArray(body.blocks) ? body.blocks : [];
  const atts = Array.isArray(body.attachments) ? body.attachments : [];
  let content = blocks.map(block).join("");
  if (!blocks.length && body.text) content = `<div class="sl-block sl-text">${mrkdwn(body.text)}</div>`;
  content += atts.map(attachment).join("");
  const name = esc(body.username ?? "kitebridge");
  const icon = body.icon_emoji ? EMOJI[body.icon_emoji.replace(/:/g, "")] ?? "🪁" : "🪁";
  const notice = blocks.length && body.text ? `<div class="sl-notification" title="notification and fallback text">🔔 ${esc(body.text)}</div>` : "";
  const time = new Date().toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  return `<div class="sl-message"><div class="sl-avatar">${icon}</div><div class="sl-main"><div class="sl-meta"><span class="sl-name">${name}</span><span class="sl-app">APP</span><span class="sl-time">${esc(
    time,
  )}</span></div>${content}</div></div>${notice}`;
}

/** The Block Kit Builder link for a body. */
export function blockKitUrl(body) {
  return (
    "https://app.slack.com/block-kit-builder/#" +
    encodeURIComponent(JSON.stringify({ blocks: body?.blocks ?? [], attachments: body?.attachments }))
  );
}
