// The 3D view: a design's GLB in millimetres (Z up), orbit/pan/zoom, picking, highlight, markup pins, cursors.
import {
  Box3,
  BufferGeometry,
  Color,
  DirectionalLight,
  EdgesGeometry,
  HemisphereLight,
  LineBasicMaterial,
  LineSegments,
  Material,
  Mesh,
  MeshStandardMaterial,
  Object3D,
  PerspectiveCamera,
  Raycaster,
  Scene,
  Sphere,
  Vector2,
  Vector3,
  WebGLRenderer,
} from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import type { Camera as ApiCamera, Vec3 } from "../api";
import { h } from "../dom";

export interface Pick {
  point: Vec3;
  normal: Vec3 | null;
  bomPath: string | null;
  faceIndex: number | null;
  partName: string | null;
}

export interface PinSpec {
  id: number;
  number: number;
  position: Vec3;
  severity: string;
  status: string;
  label: string;
  selected: boolean;
}

export interface CursorSpec {
  id: string;
  name: string;
  color: string;
  position: number[];
}

const BACKGROUND = 0xe8ecf1;
const SELECTED = new Color(0x0891b2);
const EDGE_LIMIT = 400_000; // triangles above which part edges are not drawn (load time)
const CLICK_SLOP = 5; // pixels a pointer may move and still be a click, not a drag

export class Viewer {
  readonly element: HTMLElement;
  onPick: ((pick: Pick | null, event: PointerEvent) => void) | null = null;
  onHover: ((pick: Pick | null) => void) | null = null;
  onCamera: (() => void) | null = null;
  onPinClick: ((id: number) => void) | null = null;

  private readonly renderer: WebGLRenderer;
  private readonly scene = new Scene();
  private readonly camera = new PerspectiveCamera(40, 1, 0.1, 1e6);
  private readonly controls: OrbitControls;
  private readonly overlay: HTMLElement;
  private readonly raycaster = new Raycaster();
  private model: Object3D | null = null;
  private meshes: Mesh[] = [];
  private byPath = new Map<string, Object3D[]>();
  private highlightMaterial = new MeshStandardMaterial({
    color: SELECTED,
    emissive: SELECTED,
    emissiveIntensity: 0.35,
    metalness: 0.1,
    roughness: 0.5,
    side: 2,
    polygonOffset: true,
    polygonOffsetFactor: 1,
    polygonOffsetUnits: 1,
  });
  private highlighted: Mesh[] = [];
  private pins = new Map<number, { spec: PinSpec; el: HTMLButtonElement }>();
  private cursors = new Map<string, { spec: CursorSpec; el: HTMLElement }>();
  private frame = 0;
  private animation: number | null = null;
  private down: { x: number; y: number } | null = null;
  private resize: ResizeObserver;
  private bounds = new Sphere(new Vector3(), 100);

  constructor(host: HTMLElement) {
    this.element = h("div", { class: "viewer" });
    this.renderer = new WebGLRenderer({ antialias: true, powerPreference: "high-performance" });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    this.renderer.setClearColor(BACKGROUND, 1);
    const canvas = this.renderer.domElement;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "3D model view. Drag to orbit, right-drag to pan, wheel to zoom.");
    canvas.tabIndex = 0;
    this.overlay = h("div", { class: "viewer-overlay" });
    this.element.append(canvas, this.overlay);
    host.append(this.element);

    this.camera.up.set(0, 0, 1); // CAD models are Z up, and the GLB keeps their axes
    const light = new DirectionalLight(0xffffff, 1.6);
    light.position.set(0.3, 0.6, 1);
    this.camera.add(light); // a headlight: every side the user turns to is lit the same
    this.scene.add(this.camera, new HemisphereLight(0xffffff, 0x7d8896, 1.4));

    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.enableDamping = false;
    this.controls.screenSpacePanning = true;
    this.controls.addEventListener("change", () => {
      this.requestRender();
      this.onCamera?.();
    });
    canvas.addEventListener("pointerdown", (e) => (this.down = { x: e.clientX, y: e.clientY }));
    canvas.addEventListener("pointerup", (e) => this.pointerUp(e));
    canvas.addEventListener("pointermove", (e) => {
      if (this.onHover && !e.buttons) this.onHover(this.pick(e.clientX, e.clientY));
    });
    canvas.addEventListener("pointerleave", () => this.onHover?.(null));
    canvas.addEventListener("keydown", (e) => {
      if (e.key === "f" || e.key === "F") this.fit();
    });
    this.resize = new ResizeObserver(() => this.layout());
    this.resize.observe(this.element);
    this.layout();
  }

  /** Parse a GLB held in memory and show it; returns what the page reports about it. */
  async load(buffer: ArrayBuffer): Promise<{ triangles: number; parts: number }> {
    const gltf = await new GLTFLoader().parseAsync(buffer, "");
    const root = gltf.scene;
    // The GLB's root node turns millimetres/Z-up into glTF's metres/Y-up; this view works in the file's terms.
    for (const node of root.children) {
      if (node.userData.bom_path) continue;
      node.position.set(0, 0, 0);
      node.quaternion.identity();
      node.scale.set(1, 1, 1);
    }
    root.updateMatrixWorld(true);
    let triangles = 0;
    const edges = new Map<string, EdgesGeometry>();
    const meshes: Mesh[] = [];
    root.traverse((node) => {
      if ((node as Mesh).isMesh) {
        const mesh = node as Mesh;
        const geometry = mesh.geometry as BufferGeometry;
        triangles += (geometry.index ? geometry.index.count : geometry.attributes.position.count) / 3;
        // Faces step back a little in depth, so the part edges drawn on them are never half hidden.
        for (const material of Array.isArray(mesh.material) ? mesh.material : [mesh.material]) {
          material.polygonOffset = true;
          material.polygonOffsetFactor = 1;
          material.polygonOffsetUnits = 1;
        }
        meshes.push(mesh);
      }
      const path = node.userData.bom_path as string | undefined;
      if (path) {
        const list = this.byPath.get(path) ?? [];
        list.push(node);
        this.byPath.set(path, list);
      }
    });
    if (triangles <= EDGE_LIMIT) {
      const lines = new LineBasicMaterial({ color: 0x2b3440, transparent: true, opacity: 0.45 });
      for (const mesh of meshes) {
        const geometry = mesh.geometry as BufferGeometry;
        let edge = edges.get(geometry.uuid);
        if (!edge) {
          edge = new EdgesGeometry(geometry, 28);
          edges.set(geometry.uuid, edge);
        }
        const segments = new LineSegments(edge, lines);
        segments.raycast = () => undefined;
        mesh.add(segments);
      }
    }
    this.meshes = meshes;
    this.model = root;
    this.scene.add(root);
    new Box3().setFromObject(root).getBoundingSphere(this.bounds);
    if (!Number.isFinite(this.bounds.radius) || this.bounds.radius <= 0) this.bounds.radius = 100;
    this.camera.near = this.bounds.radius / 500;
    this.camera.far = this.bounds.radius * 200;
    // An isometric-like view from the front right, above: how drawings show a part first.
    this.controls.target.copy(this.bounds.center);
    this.camera.position.copy(this.bounds.center).add(new Vector3(0.85, -1.25, 0.8).normalize().multiplyScalar(this.bounds.radius * 3));
    this.fit(undefined, false);
    return { triangles: Math.round(triangles), parts: this.byPath.size };
  }

  get loaded(): boolean {
    return this.model !== null;
  }

  instances(path: string): number {
    return this.byPath.get(path)?.length ?? 0;
  }

  /** Frame the given BOM rows (or the whole model) from the current viewing direction. */
  fit(paths?: string[], animate = true): void {
    const box = new Box3();
    const targets = paths?.length ? paths.flatMap((p) => this.byPath.get(p) ?? []) : this.model ? [this.model] : [];
    targets.forEach((t) => box.expandByObject(t));
    if (box.isEmpty()) return;
    const sphere = box.getBoundingSphere(new Sphere());
    const radius = Math.max(sphere.radius, this.bounds.radius / 200);
    const fov = (this.camera.fov * Math.PI) / 180;
    const distance = (radius / Math.sin(Math.min(fov, fov * this.camera.aspect) / 2)) * 1.08;
    const direction = this.camera.position.clone().sub(this.controls.target).normalize();
    if (direction.lengthSq() === 0) direction.set(1, -1.4, 0.9).normalize();
    const position = sphere.center.clone().add(direction.multiplyScalar(distance));
    this.moveTo(position, sphere.center, this.camera.up.clone(), this.camera.fov, animate);
  }

  /** Show the rows' instances in the selection colour; returns how many instances are lit. */
  highlight(paths: string[]): number {
    for (const mesh of this.highlighted) mesh.material = mesh.userData.__material as Material;
    this.highlighted = [];
    for (const path of paths) {
      for (const node of this.byPath.get(path) ?? []) {
        node.traverse((child) => {
          const mesh = child as Mesh;
          if (!mesh.isMesh) return;
          if (!mesh.userData.__material) mesh.userData.__material = mesh.material;
          mesh.material = this.highlightMaterial;
          this.highlighted.push(mesh);
        });
      }
    }
    this.requestRender();
    return paths.reduce((n, p) => n + this.instances(p), 0);
  }

  setPins(pins: PinSpec[]): void {
    const keep = new Set(pins.map((p) => p.id));
    for (const [id, pin] of this.pins) {
      if (!keep.has(id)) {
        pin.el.remove();
        this.pins.delete(id);
      }
    }
    for (const spec of pins) {
      let pin = this.pins.get(spec.id);
      if (!pin) {
        const el = h("button", { type: "button", class: "pin" });
        el.addEventListener("click", () => this.onPinClick?.(spec.id));
        this.overlay.append(el);
        pin = { spec, el };
        this.pins.set(spec.id, pin);
      }
      pin.spec = spec;
      pin.el.className = `pin sev-${spec.severity.toLowerCase()} st-${spec.status.toLowerCase()}${spec.selected ? " selected" : ""}`;
      pin.el.textContent = String(spec.number);
      pin.el.setAttribute("aria-label", `Markup ${spec.number}, ${spec.severity.toLowerCase()}: ${spec.label}`);
      pin.el.dataset.markup = String(spec.id);
    }
    this.placeOverlay();
  }

  setCursors(cursors: CursorSpec[]): void {
    const keep = new Set(cursors.map((c) => c.id));
    for (const [id, cursor] of this.cursors) {
      if (!keep.has(id)) {
        cursor.el.remove();
        this.cursors.delete(id);
      }
    }
    for (const spec of cursors) {
      let cursor = this.cursors.get(spec.id);
      if (!cursor) {
        const el = h("div", { class: "remote-cursor", "aria-hidden": "true" }, h("span", { class: "dot" }), h("span", { class: "name" }));
        this.overlay.append(el);
        cursor = { spec, el };
        this.cursors.set(spec.id, cursor);
      }
      cursor.spec = spec;
      (cursor.el.querySelector(".name") as HTMLElement).textContent = spec.name;
      cursor.el.dataset.color = spec.color;
    }
    this.placeOverlay();
  }

  getCamera(): ApiCamera {
    const v = (p: Vector3): Vec3 => ({ x: round(p.x), y: round(p.y), z: round(p.z) });
    return { position: v(this.camera.position), target: v(this.controls.target), up: v(this.camera.up), fov: this.camera.fov };
  }

  setCamera(camera: ApiCamera, animate = true): void {
    const vec = (p: Vec3) => new Vector3(p.x, p.y, p.z);
    const up = camera.up ? vec(camera.up) : new Vector3(0, 0, 1);
    this.moveTo(vec(camera.position), vec(camera.target), up, camera.fov ?? this.camera.fov, animate);
  }

  /** Hit test at a client position: the surface point in model millimetres, the part and the face. */
  pick(clientX: number, clientY: number): Pick | null {
    if (!this.model) return null;
    const rect = this.renderer.domElement.getBoundingClientRect();
    const ndc = new Vector2(((clientX - rect.left) / rect.width) * 2 - 1, -((clientY - rect.top) / rect.height) * 2 + 1);
    this.raycaster.setFromCamera(ndc, this.camera);
    const hit = this.raycaster.intersectObjects(this.meshes, false)[0];
    if (!hit) return null;
    let owner: Object3D | null = hit.object;
    while (owner && !owner.userData.bom_path) owner = owner.parent;
    const starts = hit.object.userData.face_triangle_starts as number[] | undefined;
    let faceIndex: number | null = null;
    if (starts && hit.faceIndex !== undefined && hit.faceIndex !== null) {
      // Triangles are stored face by face: the face is the last one starting at or before the hit triangle.
      let lo = 0;
      let hi = starts.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= hit.faceIndex) lo = mid;
        else hi = mid - 1;
      }
      faceIndex = lo;
    }
    const normal = hit.face ? hit.face.normal.clone().transformDirection(hit.object.matrixWorld) : null;
    return {
      point: { x: round(hit.point.x), y: round(hit.point.y), z: round(hit.point.z) },
      normal: normal ? { x: normal.x, y: normal.y, z: normal.z } : null,
      bomPath: (owner?.userData.bom_path as string) ?? null,
      faceIndex,
      partName: owner?.name ?? null,
    };
  }

  requestRender(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.renderer.render(this.scene, this.camera);
      this.placeOverlay();
    });
  }

  dispose(): void {
    cancelAnimationFrame(this.frame);
    if (this.animation !== null) cancelAnimationFrame(this.animation);
    this.resize.disconnect();
    this.controls.dispose();
    this.scene.traverse((node) => {
      const mesh = node as Mesh;
      if (mesh.geometry) mesh.geometry.dispose();
      const material = mesh.material as Material | Material[] | undefined;
      if (Array.isArray(material)) material.forEach((m) => m.dispose());
      else material?.dispose();
    });
    this.highlightMaterial.dispose();
    this.renderer.dispose();
    this.renderer.forceContextLoss();
    this.element.remove();
    this.model = null;
    this.meshes = [];
    this.byPath.clear();
  }

  private pointerUp(e: PointerEvent): void {
    const down = this.down;
    this.down = null;
    if (!down || e.button !== 0 || Math.hypot(e.clientX - down.x, e.clientY - down.y) > CLICK_SLOP) return;
    this.onPick?.(this.pick(e.clientX, e.clientY), e);
  }

  private moveTo(position: Vector3, target: Vector3, up: Vector3, fov: number, animate: boolean): void {
    if (this.animation !== null) cancelAnimationFrame(this.animation);
    this.animation = null;
    const from = { position: this.camera.position.clone(), target: this.controls.target.clone(), fov: this.camera.fov };
    const apply = (t: number) => {
      this.camera.position.lerpVectors(from.position, position, t);
      this.controls.target.lerpVectors(from.target, target, t);
      this.camera.fov = from.fov + (fov - from.fov) * t;
      this.camera.up.copy(up);
      this.camera.updateProjectionMatrix();
      this.controls.update();
      this.requestRender();
    };
    if (!animate) {
      apply(1);
      return;
    }
    const start = performance.now();
    const step = (now: number) => {
      const t = Math.min(1, (now - start) / 350);
      apply(1 - Math.pow(1 - t, 3));
      this.animation = t < 1 ? requestAnimationFrame(step) : null;
    };
    this.animation = requestAnimationFrame(step);
  }

  private layout(): void {
    const width = Math.max(1, this.element.clientWidth);
    const height = Math.max(1, this.element.clientHeight);
    this.renderer.setSize(width, height, true);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
    this.requestRender();
  }

  private placeOverlay(): void {
    const width = this.element.clientWidth;
    const height = this.element.clientHeight;
    const place = (el: HTMLElement, p: Vector3) => {
      p.project(this.camera);
      const visible = p.z < 1 && Math.abs(p.x) <= 1.05 && Math.abs(p.y) <= 1.05;
      el.hidden = !visible;
      if (visible) el.style.transform = `translate(${((p.x + 1) / 2) * width}px, ${((1 - p.y) / 2) * height}px)`;
    };
    for (const { spec, el } of this.pins.values()) place(el, new Vector3(spec.position.x, spec.position.y, spec.position.z));
    for (const { spec, el } of this.cursors.values()) place(el, new Vector3(...(spec.position as [number, number, number])));
  }
}

function round(value: number): number {
  return Math.round(value * 1e4) / 1e4;
}
