// Small DOM and formatting helpers shared by the client's modules.

/** Creates an element; attributes via setAttribute, children as nodes or text (never parsed as HTML). */
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

export function initials(name) {
  return (
    String(name)
      .split(/\s+/)
      .filter(Boolean)
      .slice(0, 2)
      .map((word) => [...word][0].toUpperCase())
      .join("") || "?"
  );
}

const pad = (n) => String(n).padStart(2, "0");

/** hh:mm for today; otherwise the date (with the time too when withTime). Local time. */
export function formatTime(iso, withTime) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return "";
  const now = new Date();
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}`;
  if (date.toDateString() === now.toDateString()) return time;
  const options = { day: "numeric", month: "short" };
  if (date.getFullYear() !== now.getFullYear()) options.year = "numeric";
  const day = date.toLocaleDateString(undefined, options);
  return withTime ? `${day}, ${time}` : day;
}

export function fullTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

/** User names typed in one field, comma-separated: trimmed, empty ones dropped. */
export function splitNames(text) {
  return String(text)
    .split(",")
    .map((name) => name.trim())
    .filter(Boolean);
}
