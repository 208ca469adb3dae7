// A tiny Markdown renderer that builds DOM nodes (never innerHTML), so text from documents is
// always text: "<script>" in a document shows as "<script>". Supports headings, paragraphs,
// lists, fenced code, block quotes, rules, pipe tables, **bold**, *italic*, `code` and links
// (http, https and mailto only).
"use strict";
(function () {
  function el(tag, children) {
    const node = document.createElement(tag);
    for (const c of children || []) node.append(c);
    return node;
  }

  const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*?)\*|_([^_\s][^_]*?)_|\[([^\]]+)\]\(([^)\s]+)\)/g;

  function inline(text) {
    const out = [];
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
      if (m[2] !== undefined) out.push(el("code", [m[2]]));
      else if (m[3] !== undefined || m[4] !== undefined) out.push(el("strong", inline(m[3] ?? m[4])));
      else if (m[5] !== undefined || m[6] !== undefined) out.push(el("em", inline(m[5] ?? m[6])));
      else {
        const href = m[8];
        if (/^(https?:|mailto:)/i.test(href)) {
          const a = el("a", inline(m[7]));
          a.href = href;
          a.rel = "noopener noreferrer nofollow";
          a.target = "_blank";
          out.push(a);
        } else out.push(document.createTextNode(m[0]));
      }
      last = m.index + m[0].length;
    }
    if (last < text.length) out.push(document.createTextNode(text.slice(last)));
    return out;
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function render(source) {
    const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    const frag = document.createDocumentFragment();
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      const fence = line.match(/^\s*(```|~~~)/);
      if (fence) {
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
        i++;
        frag.append(el("pre", [el("code", [body.join("\n")])]));
        continue;
      }
      const h = line.match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
      if (h) { frag.append(el("h" + h[1].length, inline(h[2]))); i++; continue; }
      if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { frag.append(el("hr")); i++; continue; }
      if (line.includes("|") && i + 1 < lines.length && /^\s*\|?\s*:?-{2,}/.test(lines[i + 1])) {
        const head = el("tr", cells(line).map((c) => el("th", inline(c))));
        const rows = [];
        i += 2;
        while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
          rows.push(el("tr", cells(lines[i++]).map((c) => el("td", inline(c)))));
        }
        frag.append(el("table", [el("thead", [head]), el("tbody", rows)]));
        continue;
      }
      if (/^\s*>/.test(line)) {
        const body = [];
        while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
        frag.append(el("blockquote", [render(body.join("\n"))]));
        continue;
      }
      const item = /^\s*([-*+]|\d+[.)])\s+(.*)$/;
      if (item.test(line)) {
        const ordered = /^\s*\d/.test(line);
        const list = el(ordered ? "ol" : "ul");
        while (i < lines.length && item.test(lines[i])) list.append(el("li", inline(lines[i++].match(item)[2])));
        frag.append(list);
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*```|\s*~~~|\s*>)/.test(lines[i]) && !item.test(lines[i])) {
        para.push(lines[i++].trim());
      }
      if (!para.length) para.push(lines[i++].trim()); // never stall on an odd line
      frag.append(el("p", inline(para.join(" "))));
    }
    return frag;
  }

  window.renderMarkdown = render;
})();
