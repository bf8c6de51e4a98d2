// Classification markings: badges on items and the banner of the most restrictive thing on screen.
import { h } from "./dom";

const LEVELS = ["UNCLASSIFIED", "CONFIDENTIAL", "SECRET", "TOP_SECRET"];

export function label(level: string): string {
  return level === "ITAR" ? "ITAR" : level.replace("_", " ");
}

export function badge(level: string): HTMLElement {
  return h("span", { class: `badge cls-${level.toLowerCase()}`, title: `Classification: ${label(level)}` }, label(level));
}

/** The banner for everything shown: the highest level, with ITAR added when export-controlled data is present. */
export function banner(levels: string[]): { text: string; cls: string } | null {
  if (levels.length === 0) return null;
  const itar = levels.includes("ITAR");
  const rank = Math.max(0, ...levels.filter((l) => l !== "ITAR").map((l) => LEVELS.indexOf(l)));
  const level = LEVELS[rank];
  if (itar && rank === 0) return { text: "CUI // ITAR — EXPORT CONTROLLED", cls: "cls-itar" };
  return { text: label(level) + (itar ? " // ITAR" : ""), cls: `cls-${level.toLowerCase()}` };
}

export function allowedFor(clearance: string, usPerson: boolean, usOrg: boolean): string[] {
  const levels = LEVELS.slice(0, Math.max(0, LEVELS.indexOf(clearance)) + 1);
  return usPerson && usOrg ? [...levels, "ITAR"] : levels;
}
